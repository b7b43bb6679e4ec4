"""The command-line tool: replay, rebuild, retention, stats (real processes)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import uuid

import psycopg2
import pytest

from pushline.db import migrate
from pushline.envelope import Envelope
from tests import oracle
from tests.conftest import ROOT, make_settings, query, settings_env
from tests.helpers import conversation, drain, enqueue, login, logout
from tests.test_concurrency import hammer_events
from workers.consumer import Consumer
from workers.handlers import conversations as conversation_handler
from workers.handlers import registry_with_handlers
from workers.registry import Registry


def at(text: str) -> dt.datetime:
    """A test time, written in UTC (the suite's PUSH_TIMEZONE)."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def no_horizons(db):
    """Prune leaves per-operator horizons behind; no other test may inherit them."""
    query_horizons = "TRUNCATE operator_horizons"
    db.cursor().execute(query_horizons)
    yield
    db.cursor().execute(query_horizons)


def sessions_of(db) -> list[tuple]:
    return oracle.read_tables(db)[1]


def cli(settings, *args: str, **env: str) -> dict:
    result = subprocess.run([str(ROOT / "bin" / "pushline"), *args], env=settings_env(settings, **env), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def store_with(settings, registry, *bodies):
    loop = Consumer(settings, registry, name="maint")
    enqueue(loop.queue, *bodies)
    drain(loop)
    loop.close()


def test_replay_after_adding_a_handler_turns_unhandled_events_into_rows(settings, db, rq):
    only_conversations = Registry()
    only_conversations.handles("conversation.start", "conversation.end")(conversation_handler.apply)
    bodies = [login(1, "2014-01-01 09:00:00"), logout(1, "2014-01-01 10:00:00"),
              conversation("start", 1, "2014-01-01 09:10:00")]
    store_with(settings, only_conversations, *bodies)
    assert query(db, "SELECT name, status FROM events ORDER BY name") == [
        ("conversation.start", "processed"), ("operator.login", "unhandled"), ("operator.logout", "unhandled")]
    assert query(db, "SELECT count(*) FROM operator_sessions") == [(0,)]

    report = cli(settings, "replay")  # this process knows every handler
    assert report["transitions"] == {"unhandled->processed": 2}
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 3)]
    assert oracle.read_tables(db)[1] == oracle.operator_sessions(bodies)


def test_replay_keeps_a_still_invalid_event_rejected(settings, db, rq):
    store_with(settings, registry_with_handlers(), conversation("start", 5, "2014-01-01 09:00:00", type_="fax"))
    before = query(db, "SELECT status, error FROM events")
    report = cli(settings, "replay")
    assert report["transitions"] == {"rejected->rejected": 1}
    assert query(db, "SELECT status, error FROM events") == before


@pytest.mark.slow
def test_rebuild_restores_a_truncated_conversations_table_exactly(settings, db, rq):
    bodies = hammer_events(400, seed=11)
    store_with(settings, registry_with_handlers(), *bodies)
    columns = "conversation_id, type, operator_id, website_id, group_id, custom_data, started_at, ended_at," \
              " duration_seconds, attrs_from, attrs_created_at, attrs_event_key"
    conversations = query(db, f"SELECT {columns} FROM conversations ORDER BY conversation_id")
    sessions = oracle.read_tables(db)[1]
    assert conversations and sessions
    db.cursor().execute("TRUNCATE conversations")

    cli(settings, "replay", "--rebuild")
    assert query(db, f"SELECT {columns} FROM conversations ORDER BY conversation_id") == conversations
    assert oracle.read_tables(db)[1] == sessions == oracle.operator_sessions(bodies)


def test_replay_of_a_time_range_changes_nothing_that_was_right(settings, db, rq):
    bodies = hammer_events(200, seed=3)
    store_with(settings, registry_with_handlers(), *bodies)
    before = oracle.read_tables(db)
    report = cli(settings, "replay", "--all-statuses", "--since", "2014-01-01 12:00", "--until", "2014-01-01 15:00")
    assert report["replayed"] > 0
    assert oracle.read_tables(db) == before


def test_prune_deletes_old_events_and_leaves_derived_rows(settings, db, rq):
    bodies = [login(1, "2013-12-31 09:00:00"), logout(1, "2013-12-31 10:00:00"),
              conversation("start", 1, "2013-12-31 09:00:00"), login(2, "2014-01-02 09:00:00")]
    store_with(settings, registry_with_handlers(), *bodies)
    before = oracle.read_tables(db)
    layout_before = layout(db)
    assert query(db, "SELECT DISTINCT tableoid::regclass::text FROM events") == [("events_before",)]
    assert cli(settings, "prune", "--before", "2014-01-01") == {"deleted_events": 3}
    assert layout(db) == layout_before  # events_before also holds rows after the cut: only those before go
    assert query(db, "SELECT name FROM events") == [("operator.login",)]
    assert oracle.read_tables(db) == before


def test_stats_reports_queue_and_counts(settings, db, rq):
    store_with(settings, registry_with_handlers(), login(1, "2014-01-01 09:00:00"),
               conversation("start", 2, "2014-01-01 09:00:00", type_="fax"))
    loop = Consumer(settings, registry_with_handlers(), name="stats")
    enqueue(loop.queue, login(3, "2014-01-01 09:00:00"))  # left pending
    report = cli(settings, "stats")
    assert report["queue_depth"] == 1
    assert 0 <= report["oldest_pending_seconds"] < 60
    assert {(r["name"], r["status"], r["events"]) for r in report["events"]} == {
        ("operator.login", "processed", 1), ("conversation.start", "rejected", 1)}
    assert "parameters.type" in report["rejected_reasons"][0]["error"]


def test_events_are_partitioned_by_month_and_undated_ones_kept(settings, db, rq):
    bad_date = undated(3)
    store_with(settings, registry_with_handlers(), login(1, day(-1, 15)), login(2, day(0, 1, hour=0)),
               login(4, "2014-01-15 09:00:00"), bad_date)
    rows_ = query(db, "SELECT tableoid::regclass::text, status FROM events ORDER BY created_at NULLS LAST")
    assert rows_ == [("events_before", "processed"), (partition(-1), "processed"), (partition(0), "processed"),
                     ("events_undated", "rejected")]
    # The same undated event again is still one event (NULLS NOT DISTINCT).
    store_with(settings, registry_with_handlers(), bad_date)
    assert query(db, "SELECT deliveries FROM events WHERE created_at IS NULL") == [(2,)]


def test_prune_then_a_login_or_logout_keeps_the_sessions_whose_events_were_pruned(settings, db, rq):
    registry = registry_with_handlers()
    store_with(settings, registry,
               # operator 1: a closed session, then one still open at the cut
               login(1, "2013-12-30 09:00:00"), logout(1, "2013-12-30 17:00:00"), login(1, "2013-12-31 09:00:00"),
               # operator 2: a logout that closes nothing, before the cut
               logout(2, "2013-12-31 08:00:00"),
               # operator 3: at 09:00 the open session closes, then a new one opens (logout first)
               login(3, "2013-12-31 08:00:00"), logout(3, "2013-12-31 09:00:00"), login(3, "2013-12-31 09:00:00"))
    assert sessions_of(db) == [
        (1, at("2013-12-30 09:00"), at("2013-12-30 17:00")), (1, at("2013-12-31 09:00"), None),
        (2, None, at("2013-12-31 08:00")),
        (3, at("2013-12-31 08:00"), at("2013-12-31 09:00")), (3, at("2013-12-31 09:00"), None)]
    assert cli(settings, "prune", "--before", "2014-01-01") == {"deleted_events": 7}
    assert query(db, "SELECT count(*) FROM events") == [(0,)]

    store_with(settings, registry, logout(1, "2014-01-02 10:00:00"), login(2, "2014-01-02 09:00:00"),
               logout(3, "2014-01-02 11:00:00"))
    assert sessions_of(db) == [
        (1, at("2013-12-30 09:00"), at("2013-12-30 17:00")), (1, at("2013-12-31 09:00"), at("2014-01-02 10:00")),
        (2, None, at("2013-12-31 08:00")), (2, at("2014-01-02 09:00"), None),
        (3, at("2013-12-31 08:00"), at("2013-12-31 09:00")), (3, at("2013-12-31 09:00"), at("2014-01-02 11:00"))]


def test_events_older_than_the_horizon_arriving_after_a_prune_change_no_session(settings, db, rq):
    registry = registry_with_handlers()
    store_with(settings, registry,
               login(1, "2013-12-30 09:00:00"), logout(1, "2013-12-30 17:00:00"), login(1, "2013-12-31 09:00:00"),
               logout(2, "2013-12-31 08:00:00"),
               login(3, "2013-12-31 08:00:00"), logout(3, "2013-12-31 09:00:00"), login(3, "2013-12-31 09:00:00"))
    before = sessions_of(db)
    cli(settings, "prune", "--before", "2014-01-01")

    # Created before each operator's horizon (operator 1 and 3: the last login
    # before the cut; operator 2, who had none: the cut), arriving late.
    late = [logout(1, "2013-12-30 12:00:00"), login(1, "2013-12-29 09:00:00"),
            login(2, "2013-12-31 07:00:00"), logout(3, "2013-12-31 08:30:00")]
    store_with(settings, registry, *late)
    assert query(db, "SELECT count(*) FROM events WHERE status = 'processed'") == [(4,)]
    assert sessions_of(db) == before

    # Created after the horizon but before the cut: their neighbours were kept, they pair.
    store_with(settings, registry, logout(1, "2013-12-31 12:00:00"))
    # And later events pair with the kept sessions.
    store_with(settings, registry, logout(1, "2014-01-02 10:00:00"), logout(3, "2014-01-02 11:00:00"))
    assert sessions_of(db) == [
        (1, None, at("2014-01-02 10:00")),
        (1, at("2013-12-30 09:00"), at("2013-12-30 17:00")), (1, at("2013-12-31 09:00"), at("2013-12-31 12:00")),
        (2, None, at("2013-12-31 08:00")),
        (3, at("2013-12-31 08:00"), at("2013-12-31 09:00")), (3, at("2013-12-31 09:00"), at("2014-01-02 11:00"))]


def test_a_late_logout_at_the_horizon_closes_the_session_open_before_it(settings, db, rq):
    registry = registry_with_handlers()
    # Two logins, no logout: the first session stays open (the next login came first).
    store_with(settings, registry, login(1, "2013-12-30 08:00:00"), login(1, "2013-12-31 09:00:00"))
    cli(settings, "prune", "--before", "2014-01-01")
    assert query(db, "SELECT operator_id, since FROM operator_horizons") == [(1, at("2013-12-31 09:00"))]
    # At 09:00 a session is open just before: the logout goes first and closes it.
    store_with(settings, registry, logout(1, "2013-12-31 09:00:00"))
    assert sessions_of(db) == [(1, at("2013-12-30 08:00"), at("2013-12-31 09:00")), (1, at("2013-12-31 09:00"), None)]
    store_with(settings, registry, logout(1, "2014-01-01 10:00:00"))
    assert sessions_of(db) == [(1, at("2013-12-30 08:00"), at("2013-12-31 09:00")),
                               (1, at("2013-12-31 09:00"), at("2014-01-01 10:00"))]


def test_horizons_only_move_forward_and_only_for_operators_with_something_pruned(settings, db, rq):
    registry = registry_with_handlers()
    store_with(settings, registry, login(1, "2013-12-30 08:00:00"), login(1, "2014-01-05 08:00:00"),
               logout(2, "2013-12-15 08:00:00"), login(3, "2014-02-01 08:00:00"))
    cli(settings, "prune", "--before", "2014-01-01")
    assert query(db, "SELECT operator_id, since FROM operator_horizons ORDER BY 1") == [
        (1, at("2013-12-30 08:00")), (2, at("2014-01-01 00:00"))]
    cli(settings, "prune", "--before", "2013-06-01")  # an earlier cut moves nothing back
    assert query(db, "SELECT operator_id, since FROM operator_horizons ORDER BY 1") == [
        (1, at("2013-12-30 08:00")), (2, at("2014-01-01 00:00"))]
    cli(settings, "prune", "--before", "2014-01-10")
    assert query(db, "SELECT operator_id, since FROM operator_horizons ORDER BY 1") == [
        (1, at("2014-01-05 08:00")), (2, at("2014-01-01 00:00"))]
    # What each operator still pairs from.
    assert query(db, "SELECT operator_id, at, kind FROM operator_events ORDER BY 1, 2") == [
        (1, at("2014-01-05 08:00"), "login"), (3, at("2014-02-01 08:00"), "login")]


def test_migration_gives_installs_pruned_before_horizons_a_safe_one(settings, db, rq):
    """0011 backfills horizons for what the old prune left: operator_events
    emptied before its cut, sessions kept."""
    registry = registry_with_handlers()
    store_with(settings, registry,
               login(1, "2013-12-30 09:00:00"), logout(1, "2013-12-30 17:00:00"), login(1, "2013-12-31 09:00:00"),
               login(2, "2014-01-02 09:00:00"),
               login(3, "2013-12-31 22:00:00"), logout(3, "2014-01-01 01:00:00"))
    # What `prune --before 2014-01-01` did before horizons existed.
    db.cursor().execute("DELETE FROM operator_events WHERE at < '2014-01-01 00:00+00'")
    db.cursor().execute("DELETE FROM events WHERE created_at < '2014-01-01 00:00+00'")
    sql = (ROOT / "migrations" / "0011.operator-horizons.sql").read_text()
    backfill = sql[sql.index("INSERT INTO operator_horizons"):]
    db.cursor().execute(backfill[:backfill.index(";")])
    assert query(db, "SELECT operator_id, since FROM operator_horizons ORDER BY 1") == [
        (1, at("2013-12-31 09:00:00.000001")),  # nothing left: just after its latest session
        (3, at("2014-01-01 01:00"))]  # its earliest login/logout left; operator 2 lost nothing

    store_with(settings, registry, logout(1, "2014-01-02 10:00:00"), login(3, "2014-01-01 02:00:00"),
               logout(3, "2014-01-01 03:00:00"))
    assert sessions_of(db) == [
        (1, at("2013-12-30 09:00"), at("2013-12-30 17:00")), (1, at("2013-12-31 09:00"), at("2014-01-02 10:00")),
        (2, at("2014-01-02 09:00"), None),
        (3, at("2013-12-31 22:00"), at("2014-01-01 01:00")), (3, at("2014-01-01 02:00"), at("2014-01-01 03:00"))]


# Partitions (migration 0009): events_before MINVALUE..B, events_YYYY_MM from B
# to H, events_after H..MAXVALUE, events_undated (DEFAULT) only for created_at
# NULL. Prune changes that layout, so these tests run on a database of their own.


@pytest.fixture
def own(settings, rq):
    """Settings and a connection (session TimeZone UTC) for a freshly migrated database."""
    base = settings.database_url.rsplit("/", 1)[0]
    name = f"pushline_test_prune_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(base + "/postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    migrate(url, "UTC")
    conn = psycopg2.connect(url, options="-c TimeZone=UTC")
    conn.autocommit = True
    yield make_settings(url, settings.redis_url), conn
    conn.close()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


def month(k: int) -> dt.datetime:
    """The first instant (UTC) of the month k months from this one."""
    now = dt.datetime.now(dt.UTC)
    year, index = divmod(now.year * 12 + now.month - 1 + k, 12)
    return dt.datetime(year, index + 1, 1, tzinfo=dt.UTC)


def day(k: int, d: int, hour: int = 9) -> str:
    return (month(k) + dt.timedelta(days=d - 1, hours=hour)).strftime("%Y-%m-%d %H:%M:%S")


def partition(k: int) -> str:
    return f"events_{month(k):%Y_%m}"


def undated(op: int) -> dict:
    body = login(op, "2014-01-01 00:00:00")
    body["datetime"]["created"] = "not a date"
    return body


def store_received_at(settings, received: dt.datetime, *bodies) -> None:
    """Like store_with, but pushed (received) at a given time."""
    loop = Consumer(settings, registry_with_handlers(), name="maint")
    for body in bodies:
        loop.queue.push(Envelope(uuid.uuid4().hex, "default", received.timestamp(), json.dumps(body).encode())
                        .encode(), high_water=10**9)
    drain(loop)
    loop.close()


def layout(conn) -> list[tuple[str, str]]:
    return query(conn, """SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
                          JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass""")


def assert_gapless(conn) -> None:
    """The range partitions cover MINVALUE..MAXVALUE, each starting where the previous one ends."""
    bounds = query(conn, r"""
        SELECT (regexp_match(b, 'FROM \((.*)\) TO'))[1], (regexp_match(b, 'TO \((.*)\)$'))[1]
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid, pg_get_expr(c.relpartbound, c.oid) AS b
        WHERE i.inhparent = 'events'::regclass AND b <> 'DEFAULT'""")
    lowers = {lower: upper for lower, upper in bounds}
    edge, seen = "MINVALUE", 0
    while edge != "MAXVALUE":
        edge, seen = lowers[edge], seen + 1
    assert seen == len(bounds)


def rows(conn) -> list[tuple]:
    return query(conn, """SELECT tableoid::regclass::text, (payload->'parameters'->>'operator_id')::int, created_at
                          FROM events ORDER BY 2""")


def test_prune_drops_whole_partitions_and_leaves_no_hole(own):
    settings, conn = own
    cut = month(-1) + dt.timedelta(days=10)  # the 11th of last month, 00:00 UTC
    store_with(settings, registry_with_handlers(),
               login(1, "2014-01-15 09:00:00"),  # events_before
               login(2, day(-3, 10)), logout(2, day(-3, 20)),  # a month wholly before the cut
               conversation("start", 4, day(-2, 5), op=4),  # another one
               login(3, day(-1, 3)), logout(3, day(-1, 20)))  # last month: before, after the cut
    store_received_at(settings, cut - dt.timedelta(days=30), undated(5))  # undated, received before the cut
    store_with(settings, registry_with_handlers(), undated(6))  # ... and now
    sessions = [(1, at("2014-01-15 09:00"), None), (2, at(day(-3, 10)), at(day(-3, 20))),
                (3, at(day(-1, 3)), at(day(-1, 20)))]
    assert sessions_of(conn) == sessions

    # In a session whose TimeZone is not UTC: bounds are written in UTC whatever it is.
    assert cli(settings, "prune", "--before", cut.strftime("%Y-%m-%d"), PGTZ="Pacific/Chatham") == {
        "deleted_events": 6}
    assert rows(conn) == [(partition(-1), 3, at(day(-1, 20))), ("events_undated", 6, None)]
    assert ("events_before", f"FOR VALUES FROM (MINVALUE) TO ('{month(-1):%Y-%m-%d} 00:00:00+00')") in layout(conn)
    assert query(conn, f"SELECT to_regclass('{partition(-2)}'), to_regclass('{partition(-3)}'),"
                       f" to_regclass('{partition(-1)}')::text") == [(None, None, partition(-1))]
    assert_gapless(conn)
    assert query(conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_pruned%%'") == [(0,)]
    assert sessions_of(conn) == sessions

    # Later: dated events land in a range partition, whatever their month, never in events_undated.
    store_with(settings, registry_with_handlers(),
               login(2, day(-3, 5)),  # in a dropped month; before operator 2's horizon
               login(1, day(-1, 25)),  # operator 1's last login was pruned
               login(7, "1900-01-01 00:00:00"), login(8, "9999-12-31 23:00:00"))
    assert rows(conn) == [
        (partition(-1), 1, at(day(-1, 25))), ("events_before", 2, at(day(-3, 5))), (partition(-1), 3, at(day(-1, 20))),
        ("events_undated", 6, None), ("events_before", 7, at("1900-01-01 00:00")),
        ("events_after", 8, at("9999-12-31 23:00"))]
    assert query(conn, "SELECT count(*) FROM events WHERE status <> 'processed'") == [(1,)]  # the undated one
    assert sessions_of(conn) == [
        (1, at("2014-01-15 09:00"), None), (1, at(day(-1, 25)), None), (2, at(day(-3, 10)), at(day(-3, 20))),
        (3, at(day(-1, 3)), at(day(-1, 20))), (7, at("1900-01-01 00:00"), None), (8, at("9999-12-31 23:00"), None)]

    # A cut inside the first month: no month goes, but every row of events_before is before it.
    cut2 = month(-1) + dt.timedelta(days=21)
    assert cli(settings, "prune", "--before", cut2.strftime("%Y-%m-%d")) == {"deleted_events": 3}  # 2, 3, 7
    assert rows(conn) == [(partition(-1), 1, at(day(-1, 25))), ("events_undated", 6, None),
                          ("events_after", 8, at("9999-12-31 23:00"))]
    assert ("events_before", f"FOR VALUES FROM (MINVALUE) TO ('{month(-1):%Y-%m-%d} 00:00:00+00')") in layout(conn)
    assert_gapless(conn)

    # A cut older than events_before's bound: its rows before the cut are deleted, the layout stays.
    store_with(settings, registry_with_handlers(), login(9, "1999-12-31 23:00:00"), login(10, "2000-01-01 00:00:00"))
    before = layout(conn)
    assert cli(settings, "prune", "--before", "2000-01-01") == {"deleted_events": 1}
    assert layout(conn) == before
    assert rows(conn) == [(partition(-1), 1, at(day(-1, 25))), ("events_undated", 6, None),
                          ("events_after", 8, at("9999-12-31 23:00")), ("events_before", 10, at("2000-01-01 00:00"))]
    sessions = sessions_of(conn)
    store_with(settings, registry_with_handlers(), logout(1, day(-1, 28)))
    assert sessions_of(conn) == [s if s[:2] != (1, at(day(-1, 25))) else (1, at(day(-1, 25)), at(day(-1, 28)))
                                 for s in sessions]


def test_prune_deletes_in_chunks_when_partition_ddl_is_busy(own):
    settings, conn = own
    store_with(settings, registry_with_handlers(), login(1, day(-3, 10)), login(2, day(-2, 10)),
               login(3, day(-1, 10)))
    before = layout(conn)
    holder = psycopg2.connect(settings.database_url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(745100, 1)")  # partition DDL in progress elsewhere
        started = time.monotonic()
        assert cli(settings, "prune", "--before", month(-1).strftime("%Y-%m-%d")) == {"deleted_events": 2}
        assert time.monotonic() - started >= 5  # it waited lock_timeout, then gave up on the DDL
    finally:
        holder.rollback()
        holder.close()
    assert layout(conn) == before
    assert rows(conn) == [(partition(-1), 3, at(day(-1, 10)))]
    # The next prune drops the partitions emptied meanwhile.
    assert cli(settings, "prune", "--before", month(-1).strftime("%Y-%m-%d")) == {"deleted_events": 0}
    assert query(conn, f"SELECT to_regclass('{partition(-2)}')") == [(None,)]
    assert_gapless(conn)


def test_prune_counts_and_drops_what_an_interrupted_prune_detached(own):
    settings, conn = own
    conn.cursor().execute("CREATE TABLE events_pruned_events_2013_01 AS SELECT 1 AS x FROM generate_series(1, 3)")
    assert cli(settings, "prune", "--before", "2000-01-01") == {"deleted_events": 3}
    assert query(conn, "SELECT to_regclass('events_pruned_events_2013_01')") == [(None,)]
