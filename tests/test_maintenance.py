"""The command-line tool: replay, rebuild, retention, stats (real processes)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import oracle
from tests.conftest import ROOT, query, settings_env
from tests.helpers import conversation, drain, enqueue, login, logout
from tests.test_concurrency import hammer_events
from workers.drain import DrainLoop
from workers.handlers import conversations as conversation_handler
from workers.handlers import registry_with_handlers
from workers.registry import Registry


def cli(settings, *args: str) -> dict:
    result = subprocess.run([str(ROOT / "bin" / "pushline"), *args], env=settings_env(settings), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def store_with(settings, registry, *bodies):
    loop = DrainLoop(settings, registry, name="maint")
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
    assert query(db, "SELECT to_regclass('events_2013_12') IS NOT NULL") == [(True,)]
    assert cli(settings, "prune", "--before", "2014-01-01") == {"deleted_events": 3}
    assert query(db, "SELECT to_regclass('events_2013_12') IS NULL") == [(True,)]  # dropped whole
    assert query(db, "SELECT name FROM events") == [("operator.login",)]
    assert oracle.read_tables(db) == before


def test_stats_reports_queue_and_counts(settings, db, rq):
    store_with(settings, registry_with_handlers(), login(1, "2014-01-01 09:00:00"),
               conversation("start", 2, "2014-01-01 09:00:00", type_="fax"))
    loop = DrainLoop(settings, registry_with_handlers(), name="stats")
    enqueue(loop.queue, login(3, "2014-01-01 09:00:00"))  # left pending
    report = cli(settings, "stats")
    assert report["queue_depth"] == 1
    assert 0 <= report["oldest_pending_age_seconds"] < 60
    assert {(r["name"], r["status"], r["events"]) for r in report["events"]} == {
        ("operator.login", "processed", 1), ("conversation.start", "rejected", 1)}
    assert "parameters.type" in report["rejected_reasons"][0]["error"]


def test_events_are_partitioned_by_month_and_undated_ones_kept(settings, db, rq):
    bad_date = login(3, "2014-02-01 09:00:00")
    bad_date["datetime"]["created"] = "not a date"
    store_with(settings, registry_with_handlers(), login(1, "2014-01-15 09:00:00"), login(2, "2014-03-01 00:00:00"),
               bad_date)
    rows = query(db, "SELECT tableoid::regclass::text, status FROM events ORDER BY 1")
    assert rows == [("events_2014_01", "processed"), ("events_2014_03", "processed"), ("events_undated", "rejected")]
    # The same undated event again is still one event (NULLS NOT DISTINCT).
    store_with(settings, registry_with_handlers(), bad_date)
    assert query(db, "SELECT deliveries FROM events WHERE created_at IS NULL") == [(2,)]
