"""COPY's text format, checked by PostgreSQL itself: what goes in comes back."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

import pytest

from pushline.pgcopy import RawJSON, copy_rows, format_rows

AWKWARD = ["plain", "tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "", "quote\"s", "é ✓ 😀",
           "{braces,commas}", "NULL"]


@pytest.fixture
def cur(db):
    with db.cursor() as cur:
        cur.execute("""CREATE TEMP TABLE copy_check (n integer, t text, f double precision, b boolean,
                       at timestamptz, tags text[], doc jsonb)""")
        yield cur


def test_every_type_and_awkward_text_round_trips(cur):
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    rows = [
        (i, text, i / 3, i % 2 == 0, dt.datetime(2014, 1, 1, 0, 0, i, 123456, tzinfo=paris), [text, "x,y", text],
         {"k": text, "n": [1, 2.5, None, True]})
        for i, text in enumerate(AWKWARD)
    ]
    rows.append((None, None, None, None, None, None, None))
    copy_rows(cur, "copy_check", ("n", "t", "f", "b", "at", "tags", "doc"), rows)
    cur.execute("SELECT n, t, f, b, at, tags, doc FROM copy_check ORDER BY n NULLS LAST")
    back = cur.fetchall()
    assert len(back) == len(rows)
    for sent, got in zip(rows, back, strict=True):
        assert got == sent


def test_raw_json_text_is_stored_as_the_json_it_spells(cur):
    text = '{"a": "tab\\there", "b": [1, {"c": "\\u00e9"}], "d": "back\\\\slash"}'
    copy_rows(cur, "copy_check", ("n", "doc"), [(1, RawJSON(text))])
    cur.execute("SELECT doc FROM copy_check")
    assert cur.fetchone()[0] == json.loads(text)


def test_a_type_copy_cannot_spell_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot COPY a set"):
        format_rows([(1, {1, 2})])


def _staged(cur) -> list[int]:
    cur.execute("SELECT deliveries FROM stage_events ORDER BY deliveries")
    return [n for (n,) in cur.fetchall()]


def _rows(*numbers: int) -> list[tuple]:
    return [(None, "s", "n", None, None, None, n, ["r"], None, "processed", None) for n in numbers]


def test_a_prepared_session_stages_exactly_the_rows_of_each_call(settings, db):
    """A worker's session skips the DDL and empties a staging table only when it
    staged it before in the same transaction: whatever ended that transaction
    (commit, rollback, a savepoint rolled back), each call sees only its own rows."""
    from pushline.db import connect
    from pushline.pgcopy import prepare_staging, stage_rows
    from workers.store import _EVENT_COLUMNS

    conn = connect(settings.database_url, "pushline-test")
    try:
        prepare_staging(conn)
        with conn.cursor() as cur:
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(1, 2))
            assert _staged(cur) == [1, 2]
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(3))  # the same transaction: emptied first
            assert _staged(cur) == [3]
            conn.commit()
            assert _staged(cur) == []
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(4))
            conn.rollback()
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(5))
            assert _staged(cur) == [5]
            cur.execute("SAVEPOINT one_event")
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(6))
            cur.execute("ROLLBACK TO SAVEPOINT one_event")
            assert _staged(cur) == [5]
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(7))
            assert _staged(cur) == [7]
            conn.commit()
            # The tables outlive a rolled-back transaction that used them: they were made in one of their own.
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(8))
            conn.rollback()
            stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(9))
            assert _staged(cur) == [9]
    finally:
        conn.close()
    # A plain connection (replay, tools) still makes and empties the tables itself.
    with db.cursor() as cur:
        cur.execute("BEGIN")
        stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(10))
        stage_rows(cur, "stage_events", _EVENT_COLUMNS, _rows(11))
        assert _staged(cur) == [11]
        cur.execute("ROLLBACK")


def test_a_worker_whose_staging_tables_vanish_retries_the_batch_and_loses_nothing(settings, db, rq):
    """A pooler in transaction mode gives each transaction any server session: the
    tables made for one are not in the next. That is no event's fault: the batch
    is retried (nothing rejected) and the worker makes them in each transaction."""
    import pytest as _pytest

    from tests.conftest import query
    from tests.helpers import drain, enqueue, login
    from workers.consumer import Consumer, Transient
    from workers.handlers import registry_with_handlers

    loop = Consumer(settings, registry_with_handlers(), name="pooled")
    try:
        enqueue(loop.queue, login(1, "2014-01-01 10:00:00"))
        assert drain(loop) == 1
        assert loop.conn.staging_made
        with loop.conn.cursor() as cur:  # what another server session looks like: no such tables
            cur.execute("DROP TABLE pg_temp.stage_events")
        loop.conn.commit()
        enqueue(loop.queue, login(2, "2014-01-01 10:00:00"), login(3, "2014-01-01 10:00:00"))
        with _pytest.raises(Transient):
            loop.step(block_seconds=0)  # given back to the queue, not rejected
        assert loop.staging_per_session is False
        assert drain(loop) == 2
    finally:
        loop.close()
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 3)]
