"""Advisory locks live in Pushline's own key space; functions pin their search_path."""

from __future__ import annotations

import psycopg2

from tests.conftest import query


def test_operator_locks_use_the_two_key_form_in_pushlines_key_space(settings, db):
    from pushline.db import PUSHLINE_LOCKS

    other = psycopg2.connect(settings.database_url)
    try:
        with other.cursor() as cur:  # another application's one-key lock on the same number
            cur.execute("SELECT pg_advisory_lock(42)")
        with db.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SET LOCAL lock_timeout = '2s'")
            cur.execute("SELECT pushline_lock_operators(ARRAY[42, 7]::bigint[])")  # not blocked by it
            held = query(db, """SELECT classid::bigint, objsubid FROM pg_locks
                                WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY objid""")
            cur.execute("ROLLBACK")
        assert {c for c, _ in held} == {PUSHLINE_LOCKS} and {s for _, s in held} == {2}  # 2: the two-key form
        assert len(held) == 2
    finally:
        other.close()


def test_every_security_definer_function_pins_a_safe_search_path(db):
    rows = query(db, """SELECT p.proname, coalesce(array_to_string(p.proconfig, ','), '')
                        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE n.nspname = 'public' AND p.prosecdef""")
    assert rows  # there are some: partitions and the status figures
    unsafe = [(name, config) for name, config in rows
              if not config.startswith("search_path=") or not config.rstrip('"').endswith("pg_temp")]
    assert unsafe == []
