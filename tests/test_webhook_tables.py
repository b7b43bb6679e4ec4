"""The webhook tables and views (CONTRACT 7), with the real queue and drain loop.

Every expected row below is worked out by hand from the contract's text.
Events are delivered out of order and in several batches, so that each case
also checks that the rows depend on the set of events only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from marshmallow import fields

from pushline.db import TOOL, connect
from pushline.envelope import Envelope
from pushline.identity import event_key
from schemas import push_timezone
from schemas.webhooks import ConversationPushed
from tests.conftest import make_settings, query
from tests.helpers import (
    answered,
    availability,
    closed,
    connected,
    disconnected,
    drain,
    enqueue,
    login,
    pushed,
    webhook,
)
from tests.test_security import as_role
from workers.batch import process_items
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers
from workers.intake import read_item
from workers.registry import Registry
from workers.replay import Selection, rebuild, replay
from workers.store import group_by_key, write_batch

ANALYST_TABLES = ("conversations_v2", "conversation_assignments", "satisfaction", "user_sessions",
                  "availability_periods")
ANALYST_VIEWS = ("conversation_v2_daily", "user_daily")
SIDE_TABLES = ("user_events", "availability_events", "webhook_locks", "conversation_event_ids")


def T(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.fixture
def wh(db):
    """The db fixture empties the Push API tables; these are emptied here."""
    db.cursor().execute(f"TRUNCATE {', '.join(ANALYST_TABLES + SIDE_TABLES)} RESTART IDENTITY")
    return db


@pytest.fixture
def loop(settings, wh, rq):
    loop = Consumer(settings, registry_with_handlers(), name="webhooks")
    yield loop
    loop.close()


@pytest.fixture
def paris(wh):
    """Views in Europe/Paris (pushline_config is shared by the suite: put back after)."""
    (before,), = query(wh, "SELECT timezone FROM pushline_config")
    wh.cursor().execute("UPDATE pushline_config SET timezone = 'Europe/Paris'")
    yield wh
    wh.cursor().execute("UPDATE pushline_config SET timezone = %s", (before,))


def store(loop, *batches: list[dict]) -> None:
    """Each list is queued and drained on its own: later lists arrive after earlier ones are stored."""
    for bodies in batches:
        enqueue(loop.queue, *bodies)
        drain(loop)


def conversation_row(db, cid: str) -> dict:
    columns = ("client_id", "project_id", "channel", "visitor_id", "operator_id", "last_operator_id", "operator_ids",
               "assignments", "started_at", "ended_at", "duration_seconds")
    rows = query(db, f"SELECT {', '.join(columns)} FROM conversations_v2 WHERE conversation_id = %s", cid)
    return dict(zip(columns, rows[0], strict=True)) if rows else None


def statuses(db) -> list[tuple]:
    return query(db, "SELECT name, status, error, deliveries FROM events ORDER BY id")


def sessions(db, user: int) -> list[tuple]:
    return query(db, """SELECT connected_at, disconnected_at, duration_seconds FROM user_sessions
                        WHERE user_id = %s ORDER BY connected_at NULLS FIRST, disconnected_at NULLS LAST""", user)


def periods(db, user: int) -> list[tuple]:
    return query(db, """SELECT channel, status, from_at, to_at, duration_seconds FROM availability_periods
                        WHERE user_id = %s ORDER BY channel, from_at, from_event""", user)


def everything(db) -> dict[str, list]:
    """Every row of every analyst table and view (user_sessions without its surrogate id)."""
    columns = {"user_sessions": "user_id, connected_at, disconnected_at, duration_seconds"}
    return {name: sorted(query(db, f"SELECT {columns.get(name, '*')} FROM {name}"), key=repr)
            for name in ANALYST_TABLES + ANALYST_VIEWS}


# --- conversations_v2 and conversation_assignments ------------------------------------------------

def test_a_conversation_transferred_twice(loop, wh):
    first = pushed("c-1", 11, "2024-03-05T09:00:00.000Z", channel="CHAT", project=12, client=340)
    second = pushed("c-1", 22, "2024-03-05T09:05:00.000Z", channel="CALL", project=13, client=341)
    third = pushed("c-1", 33, "2024-03-05T09:10:00.000Z", channel="VIDEO", project=14, client=342)
    end = closed("c-1", [33, 11, 22], "2024-03-05T09:30:00.000Z", channel="SMS", project=15, client=343)
    store(loop, [end, third], [first], [second])

    assert conversation_row(wh, "c-1") == {
        "client_id": 340, "project_id": 12, "channel": "CHAT", "visitor_id": "visitor-c-1",  # the earliest pushed
        "operator_id": 11, "last_operator_id": 33, "operator_ids": [33, 11, 22], "assignments": 3,
        "started_at": T("2024-03-05T09:00:00Z"), "ended_at": T("2024-03-05T09:30:00Z"), "duration_seconds": 1800.0}
    assert query(wh, "SELECT event_uuid, conversation_id, operator_id, assigned_at FROM conversation_assignments"
                     " ORDER BY assigned_at") == [
        (first["eventId"], "c-1", 11, T("2024-03-05T09:00:00Z")),
        (second["eventId"], "c-1", 22, T("2024-03-05T09:05:00Z")),
        (third["eventId"], "c-1", 33, T("2024-03-05T09:10:00Z"))]
    assert query(wh, "SELECT day::text, project_id, channel, conversations, closed, avg_duration_seconds, transfers"
                     " FROM conversation_v2_daily") == [("2024-03-05", 12, "CHAT", 1, 1, 1800.0, 2)]


def test_closed_before_any_pushed_then_pushed_arrives(loop, wh):
    early = closed("c-2", [5], "2024-03-05T11:00:00Z", channel="SMS", project=7, client=70)
    later = closed("c-2", [5, 6], "2024-03-05T12:00:00Z", channel="WHATSAPP", project=8, client=80)
    later["visitorId"] = None
    store(loop, [later], [early])
    assert conversation_row(wh, "c-2") == {
        "client_id": 80, "project_id": 8, "channel": "WHATSAPP", "visitor_id": None,  # the latest closed
        "operator_id": None, "last_operator_id": None, "operator_ids": [5, 6], "assignments": 0,
        "started_at": None, "ended_at": T("2024-03-05T12:00:00Z"), "duration_seconds": None}
    assert query(wh, "SELECT count(*) FROM conversation_v2_daily") == [(0,)]  # no pushed event: no day
    assert query(wh, "SELECT count(*) FROM conversation_assignments") == [(0,)]

    store(loop, [pushed("c-2", 9, "2024-03-05T10:00:00+01:00", channel="CHAT", project=1, client=10)])
    assert conversation_row(wh, "c-2") == {
        "client_id": 10, "project_id": 1, "channel": "CHAT", "visitor_id": "visitor-c-2",
        "operator_id": 9, "last_operator_id": 9, "operator_ids": [5, 6], "assignments": 1,
        "started_at": T("2024-03-05T09:00:00Z"), "ended_at": T("2024-03-05T12:00:00Z"), "duration_seconds": 10800.0}
    assert query(wh, "SELECT day::text, project_id, channel, conversations, closed, transfers"
                     " FROM conversation_v2_daily") == [("2024-03-05", 1, "CHAT", 1, 1, 0)]


def test_a_redelivery_is_one_event_counted_twice_and_changes_nothing(loop, wh):
    body = pushed("c-3", 4, "2024-03-05T09:00:00.120Z", sent="2024-03-05T09:00:00.410Z")
    retry = {**body, "sentAt": "2024-03-05T09:00:10.410Z"}
    store(loop, [body])
    before = everything(wh)
    store(loop, [retry], [retry])
    assert statuses(wh) == [("v2.conversation.pushed", "processed", None, 3)]
    [(sent, payload_sent)] = query(wh, "SELECT sent_at, payload->>'sentAt' FROM events")
    assert (sent, payload_sent) == (T("2024-03-05T09:00:00.410Z"), "2024-03-05T09:00:00.410Z")  # as first received
    assert everything(wh) == before
    assert conversation_row(wh, "c-3")["assignments"] == 1


def test_ties_at_one_instant_are_broken_by_event_id_as_text(loop, wh):
    # One instant written three ways. As text, byte by byte: "B..." < "a..." < "b...".
    at = ("2024-03-05T09:00:00Z", "2024-03-05T10:00:00+01:00", "2024-03-05T04:00:00-05:00")
    store(loop,
          [pushed("c-4", 2, at[0], project=2, event_id="a-second"),
           closed("c-4", [1], at[1], event_id="b-last-closed"),
           closed("c-4", [2], at[2], event_id="B-first-closed")],
          [pushed("c-4", 1, at[1], project=1, event_id="B-first"),
           pushed("c-4", 3, at[2], project=3, event_id="b-third")])
    row = conversation_row(wh, "c-4")
    assert (row["operator_id"], row["last_operator_id"], row["project_id"]) == (1, 3, 1)
    assert row["operator_ids"] == [1]  # the latest closed: "b-last-closed"
    assert (row["assignments"], row["duration_seconds"]) == (3, 0.0)


# --- satisfaction -----------------------------------------------------------------------------------

def test_satisfaction_takes_each_answer_from_the_latest_event_carrying_it(loop, wh):
    store(loop,
          [answered("c-5", "2024-03-05T10:03:00Z", customerSatisfaction=5),
           answered("c-5", "2024-03-05T10:01:00Z", netPromoterScore=9),
           answered("c-6", "2024-03-05T10:00:00Z", customQuestion=True)],
          [answered("c-5", "2024-03-05T10:00:00Z", customerSatisfaction=4),
           answered("c-5", "2024-03-05T10:02:00Z", satisfactionComment="great"),
           answered("c-5", "2024-03-05T10:04:00Z", customQuestion=False),
           answered("c-5", "2024-03-05T09:59:00Z", satisfactionComment="older")])
    assert query(wh, """SELECT conversation_id, customer_satisfaction, customer_satisfaction_at, net_promoter_score,
                               net_promoter_score_at, satisfaction_comment, satisfaction_comment_at
                        FROM satisfaction""") == [
        ("c-5", 5, T("2024-03-05T10:03:00Z"), 9, T("2024-03-05T10:01:00Z"), "great", T("2024-03-05T10:02:00Z"))]
    # customQuestion only: processed, and no row.
    assert query(wh, "SELECT count(*) FROM events WHERE status = 'processed'") == [(7,)]
    assert query(wh, "SELECT count(*) FROM satisfaction WHERE conversation_id = 'c-6'") == [(0,)]


def test_satisfaction_ties_and_an_answer_with_none_changes_nothing(loop, wh):
    store(loop, [answered("c-7", "2024-03-05T10:00:00Z", netPromoterScore=3, event_id="x-2"),
                 answered("c-7", "2024-03-05T11:00:00+01:00", netPromoterScore=10, event_id="x-1")])
    assert query(wh, "SELECT net_promoter_score, customer_satisfaction, customer_satisfaction_at FROM satisfaction"
                     " WHERE conversation_id = 'c-7'") == [(3, None, None)]  # "x-2" > "x-1"
    before = everything(wh)
    store(loop, [answered("c-7", "2024-03-05T12:00:00Z", customQuestion=True)])
    assert everything(wh) == before


def test_conversation_v2_daily(loop, wh):
    day = "2024-03-05T"
    store(loop,
          # c-a: transferred once, closed after 10 minutes, CSAT 4, NPS 10
          [pushed("c-a", 1, day + "08:00:00Z", project=5), pushed("c-a", 2, day + "08:01:00Z", project=6),
           closed("c-a", [1, 2], day + "08:10:00Z"),
           answered("c-a", day + "08:11:00Z", customerSatisfaction=4),
           answered("c-a", day + "08:12:00Z", netPromoterScore=10)],
          # c-b: transferred twice, closed after 30 minutes, CSAT 5, NPS 9
          [pushed("c-b", 1, day + "09:00:00Z", project=5), pushed("c-b", 2, day + "09:02:00Z"),
           pushed("c-b", 3, day + "09:03:00Z"), closed("c-b", [1, 2, 3], day + "09:30:00Z"),
           answered("c-b", day + "10:00:00Z", customerSatisfaction=5),
           answered("c-b", day + "10:01:00Z", netPromoterScore=9)],
          # c-c: open, NPS 0 (a detractor), no CSAT
          [pushed("c-c", 1, day + "23:59:59Z", project=5), answered("c-c", "2024-03-06T00:10:00Z", netPromoterScore=0)],
          # elsewhere: another channel, another day, a closed-only conversation, satisfaction without conversation
          [pushed("c-d", 1, day + "12:00:00Z", project=5, channel="CALL"),
           pushed("c-e", 1, "2024-03-06T00:00:00Z", project=5),
           closed("c-f", [1], day + "12:00:00Z", project=5),
           answered("c-g", day + "12:00:00Z", customerSatisfaction=1)])
    rows = query(wh, """SELECT day::text, project_id, channel, conversations, closed, avg_duration_seconds, transfers,
                               csat_answers, avg_csat, nps_answers, nps
                        FROM conversation_v2_daily ORDER BY 1, 2, 3""")
    [call, chat, next_day] = rows
    assert chat[:8] == ("2024-03-05", 5, "CHAT", 3, 2, 1200.0, 3, 2)
    # NPS: one 10 and one 9 are promoters, the 0 a detractor: 100 * (2 - 1) / 3
    assert chat[8:] == (4.5, 3, pytest.approx(100 / 3))
    assert call == ("2024-03-05", 5, "CALL", 1, 0, None, 0, 0, None, 0, None)
    assert next_day == ("2024-03-06", 5, "CHAT", 1, 0, None, 0, 0, None, 0, None)


# --- user_sessions --------------------------------------------------------------------------------

def test_user_sessions_pair_like_operator_sessions(loop, wh):
    d = "2024-03-05T"
    events = [
        connected(3, d + "08:00:00Z"), disconnected(3, d + "09:00:00Z"),    # (08, 09)
        connected(3, d + "10:00:00Z"),                                      # (10, -): a connect comes first
        connected(3, d + "11:00:00Z"), disconnected(3, d + "12:00:00Z"),    # (11, 12)
        disconnected(3, d + "13:00:00Z"),                                   # (-, 13): closes nothing
        connected(3, d + "14:00:00Z"), disconnected(3, d + "14:00:00Z"),    # (14, 14): nothing open before
        connected(3, d + "15:00:00Z"),                                      # (15, 16): closed first at 16
        connected(3, d + "16:00:00Z"), disconnected(3, d + "16:00:00Z"),    # (16, 17)
        disconnected(3, d + "17:00:00Z"),
    ]
    # Newest first, one event per batch: every window starts before the sessions already stored.
    store(loop, *([body] for body in reversed(events)))
    expected = [
        (None, T(d + "13:00:00Z"), None),
        (T(d + "08:00:00Z"), T(d + "09:00:00Z"), 3600.0),
        (T(d + "10:00:00Z"), None, None),
        (T(d + "11:00:00Z"), T(d + "12:00:00Z"), 3600.0),
        (T(d + "14:00:00Z"), T(d + "14:00:00Z"), 0.0),
        (T(d + "15:00:00Z"), T(d + "16:00:00Z"), 3600.0),
        (T(d + "16:00:00Z"), T(d + "17:00:00Z"), 3600.0),
    ]
    assert sessions(wh, 3) == expected

    # The same events in another order and batching, for another user.
    other = [webhook(b["eventType"], b["createdAt"], userId=4, clientId=1) for b in events]
    store(loop, other[5:9], other[::3], other)
    assert sessions(wh, 4) == expected


def test_a_late_disconnect_closes_the_session_open_before_it(loop, wh):
    d = "2024-03-05T"
    store(loop, [connected(8, d + "08:00:00Z"), connected(8, d + "10:00:00Z")])
    assert sessions(wh, 8) == [(T(d + "08:00:00Z"), None, None), (T(d + "10:00:00Z"), None, None)]
    store(loop, [disconnected(8, d + "09:00:00Z")])
    assert sessions(wh, 8) == [(T(d + "08:00:00Z"), T(d + "09:00:00Z"), 3600.0), (T(d + "10:00:00Z"), None, None)]
    store(loop, [disconnected(8, d + "10:00:00Z")])  # at the same instant as the 10:00 connect: nothing open before
    assert sessions(wh, 8) == [(T(d + "08:00:00Z"), T(d + "09:00:00Z"), 3600.0),
                               (T(d + "10:00:00Z"), T(d + "10:00:00Z"), 0.0)]
    store(loop, [connected(8, d + "09:30:00Z")])  # now a session is open just before 10:00: the disconnect closes it
    assert sessions(wh, 8) == [(T(d + "08:00:00Z"), T(d + "09:00:00Z"), 3600.0),
                               (T(d + "09:30:00Z"), T(d + "10:00:00Z"), 1800.0),
                               (T(d + "10:00:00Z"), None, None)]


# --- availability_periods ---------------------------------------------------------------------------

def test_availability_runs_per_channel(loop, wh):
    d = "2024-03-05T"
    e1 = availability(7, d + "10:00:00Z", ("CHAT", "AVAILABLE"), ("CALL", "UNAVAILABLE"))
    e2 = availability(7, d + "10:10:00Z", ("CHAT", "AVAILABLE"))  # same status: the run goes on
    e3 = availability(7, d + "10:20:00Z", ("CHAT", "UNAVAILABLE"), ("CHAT", "AVAILABLE"))  # the last entry counts
    e4 = availability(7, d + "10:30:00Z", ("CHAT", "UNAVAILABLE"), ("CALL", "AVAILABLE"))
    e5 = availability(7, d + "10:40:00Z", ("CALL", "UNAVAILABLE"))
    # VIDEO: two events at one instant, ordered by eventId
    e6 = availability(7, d + "10:50:00Z", ("VIDEO", "UNAVAILABLE"), event_id="v-2")
    e7 = availability(7, "2024-03-05T11:50:00+01:00", ("VIDEO", "AVAILABLE"), event_id="v-1")
    store(loop, [e4, e1, e6], [e3, e5], [e2, e7], [e3])
    assert periods(wh, 7) == [
        ("CALL", "UNAVAILABLE", T(d + "10:00:00Z"), T(d + "10:30:00Z"), 1800.0),
        ("CALL", "AVAILABLE", T(d + "10:30:00Z"), T(d + "10:40:00Z"), 600.0),
        ("CALL", "UNAVAILABLE", T(d + "10:40:00Z"), None, None),
        ("CHAT", "AVAILABLE", T(d + "10:00:00Z"), T(d + "10:30:00Z"), 1800.0),
        ("CHAT", "UNAVAILABLE", T(d + "10:30:00Z"), None, None),
        ("VIDEO", "AVAILABLE", T(d + "10:50:00Z"), T(d + "10:50:00Z"), 0.0),
        ("VIDEO", "UNAVAILABLE", T(d + "10:50:00Z"), None, None),
    ]


def test_an_availability_update_listing_no_channel_changes_nothing(loop, wh, caplog):
    """Processed, alone in its batch or beside a connection of the same user: no row, and
    the batch goes through whole (event by event, it would end the same: only the log says)."""
    store(loop, [availability(12, "2024-03-05T09:00:00Z")],
          [availability(12, "2024-03-05T09:05:00Z"), connected(12, "2024-03-05T09:06:00Z")])
    assert "isolating" not in caplog.text
    assert query(wh, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 3)]
    assert periods(wh, 12) == []
    assert query(wh, "SELECT user_id, disconnected_at FROM user_sessions") == [(12, None)]


def test_an_event_inside_a_run_splits_it(loop, wh):
    d = "2024-03-05T"
    store(loop, [availability(9, d + "10:00:00Z", ("CHAT", "AVAILABLE")),
                 availability(9, d + "11:00:00Z", ("CHAT", "AVAILABLE")),
                 availability(9, d + "12:00:00Z", ("CHAT", "UNAVAILABLE"))])
    assert periods(wh, 9) == [("CHAT", "AVAILABLE", T(d + "10:00:00Z"), T(d + "12:00:00Z"), 7200.0),
                              ("CHAT", "UNAVAILABLE", T(d + "12:00:00Z"), None, None)]
    store(loop, [availability(9, d + "10:30:00Z", ("CHAT", "UNAVAILABLE"))])
    assert periods(wh, 9) == [("CHAT", "AVAILABLE", T(d + "10:00:00Z"), T(d + "10:30:00Z"), 1800.0),
                              ("CHAT", "UNAVAILABLE", T(d + "10:30:00Z"), T(d + "11:00:00Z"), 1800.0),
                              ("CHAT", "AVAILABLE", T(d + "11:00:00Z"), T(d + "12:00:00Z"), 3600.0),
                              ("CHAT", "UNAVAILABLE", T(d + "12:00:00Z"), None, None)]
    store(loop, [availability(9, d + "09:00:00Z", ("CHAT", "AVAILABLE"))])  # before everything: joins the first run
    assert periods(wh, 9)[0] == ("CHAT", "AVAILABLE", T(d + "09:00:00Z"), T(d + "10:30:00Z"), 5400.0)


def _run_events(user: int, prefix: str) -> list[dict]:
    """CHAT and CALL availabilities of one user; ids sort as their names within a prefix."""
    d = "2024-03-05T"

    def at(time: str, name: str, *pairs: tuple[str, str]) -> dict:
        return availability(user, d + time + "Z", *pairs, event_id=f"{prefix}-{name}")

    return [
        at("10:00:00", "e1", ("CHAT", "AVAILABLE"), ("CALL", "UNAVAILABLE")),
        at("10:10:00", "e2", ("CHAT", "AVAILABLE")),
        at("10:20:00", "e3", ("CHAT", "AVAILABLE")),
        at("10:30:00", "e4", ("CHAT", "AVAILABLE")),                          # at the end, same status
        at("10:40:00", "e5", ("CHAT", "UNAVAILABLE"), ("CALL", "UNAVAILABLE")),  # at the end, another status
        at("10:15:00", "e6", ("CHAT", "AVAILABLE")),                          # inside a run, same status
        at("10:25:00", "m-7", ("CHAT", "UNAVAILABLE")),                       # inside a run: splits it
        at("10:25:00", "m-8", ("CHAT", "AVAILABLE")),                         # same instant, after m-7 by id
        at("10:05:00", "e9", ("CHAT", "UNAVAILABLE")),                        # two in one batch: inside...
        at("10:50:00", "e10", ("CHAT", "UNAVAILABLE")),                       # ...and at the end
        at("10:25:00", "m-1", ("CHAT", "AWAY")),                              # same instant, before m-7 by id
        at("09:00:00", "e11", ("CHAT", "UNAVAILABLE")),                       # before everything
    ]


def test_runs_are_split_and_joined_whatever_the_window(loop, wh):
    """Each batch recomputes from the event just before its earliest one: the run
    holding that event keeps its start and gets its new end."""
    d = "2024-03-05T"
    e = _run_events(10, "a")
    call = [("CALL", "UNAVAILABLE", T(d + "10:00:00Z"), None, None)]  # never changes: one run, whatever comes

    def chat(*runs):
        return [("CHAT", status, T(d + start + "Z"), end and T(d + end + "Z"),
                 end and (T(d + end + "Z") - T(d + start + "Z")).total_seconds()) for status, start, end in runs]

    store(loop, e[0:3], e[3:4])
    assert periods(wh, 10) == call + chat(("AVAILABLE", "10:00:00", None))
    store(loop, e[4:5])
    assert periods(wh, 10) == call + chat(("AVAILABLE", "10:00:00", "10:40:00"), ("UNAVAILABLE", "10:40:00", None))
    store(loop, e[5:6])
    assert periods(wh, 10) == call + chat(("AVAILABLE", "10:00:00", "10:40:00"), ("UNAVAILABLE", "10:40:00", None))
    store(loop, e[6:7])
    assert periods(wh, 10) == call + chat(
        ("AVAILABLE", "10:00:00", "10:25:00"), ("UNAVAILABLE", "10:25:00", "10:30:00"),
        ("AVAILABLE", "10:30:00", "10:40:00"), ("UNAVAILABLE", "10:40:00", None))
    store(loop, e[7:8])
    assert periods(wh, 10) == call + chat(
        ("AVAILABLE", "10:00:00", "10:25:00"), ("UNAVAILABLE", "10:25:00", "10:25:00"),
        ("AVAILABLE", "10:25:00", "10:40:00"), ("UNAVAILABLE", "10:40:00", None))
    store(loop, e[8:10])
    after_both = [("AVAILABLE", "10:00:00", "10:05:00"), ("UNAVAILABLE", "10:05:00", "10:10:00"),
                  ("AVAILABLE", "10:10:00", "10:25:00"), ("UNAVAILABLE", "10:25:00", "10:25:00"),
                  ("AVAILABLE", "10:25:00", "10:40:00"), ("UNAVAILABLE", "10:40:00", None)]
    assert periods(wh, 10) == call + chat(*after_both)
    store(loop, e[10:11])
    with_away = [*after_both[:3], ("AWAY", "10:25:00", "10:25:00"), *after_both[3:]]
    assert periods(wh, 10) == call + chat(*with_away)
    store(loop, e[11:12], e[3:6])  # and redeliveries change nothing
    final = call + chat(("UNAVAILABLE", "09:00:00", "10:00:00"), *with_away)
    assert periods(wh, 10) == final

    # The same set for another user, newest first, three per batch.
    other = _run_events(11, "b")[::-1]
    store(loop, *(other[i:i + 3] for i in range(0, len(other), 3)))
    assert periods(wh, 11) == final


# --- user_daily, in Europe/Paris ----------------------------------------------------------------------

def test_user_daily_in_paris(database_url, redis_url, paris, rq):
    settings = make_settings(database_url, redis_url, PUSH_TIMEZONE="Europe/Paris")
    loop = Consumer(settings, registry_with_handlers(), name="paris")
    try:
        store(loop, [
            # One session from 23:30 to 01:00 local: 1800 s on the 5th, 3600 s on the 6th, counted on the 5th.
            connected(5, "2024-03-05T23:30:00+01:00"), disconnected(5, "2024-03-06T00:00:00Z"),
            # An assignment at 23:10 UTC is on the 6th in Paris.
            pushed("c-p", 5, "2024-03-05T23:10:00Z"),
            # CHAT available 22:00-00:30 and 10:00-10:15, CALL 23:00-02:00, overlapping: the union
            # is 22:00-02:00 (7200 s on each day) and 10:00-10:15 (900 s on the 6th).
            availability(5, "2024-03-05T22:00:00+01:00", ("CHAT", "AVAILABLE")),
            availability(5, "2024-03-05T23:00:00+01:00", ("CALL", "AVAILABLE")),
            availability(5, "2024-03-06T00:30:00+01:00", ("CHAT", "UNAVAILABLE")),
            availability(5, "2024-03-06T02:00:00+01:00", ("CALL", "UNAVAILABLE"), ("VIDEO", "AVAILABLE")),
            # Naive: read in PUSH_TIMEZONE (Paris).
            availability(5, "2024-03-06T10:00:00", ("CHAT", "AVAILABLE")),
            availability(5, "2024-03-06T10:15:00", ("CHAT", "UNAVAILABLE")),
            # The last run of VIDEO has no end: not counted.
            # 30 March 2025 in Paris lasts 23 hours.
            availability(6, "2025-03-30T00:00:00+01:00", ("CHAT", "AVAILABLE")),
            availability(6, "2025-03-31T00:00:00+02:00", ("CHAT", "UNAVAILABLE")),
        ])
    finally:
        loop.close()
    assert query(paris, "SELECT * FROM user_daily ORDER BY user_id, day") == [
        (5, dt.date(2024, 3, 5), 1, 1800.0, 0, 7200.0),
        (5, dt.date(2024, 3, 6), 0, 3600.0, 1, 8100.0),
        (6, dt.date(2025, 3, 30), 0, 0.0, 0, 82800.0),
    ]


# --- what is not a table row -------------------------------------------------------------------------

def test_invalid_and_unknown_webhooks(loop, wh):
    bad_ids = closed("c-8", [1], "2024-03-05T10:00:00Z")
    bad_ids["operatorIds"] = "1,2"
    no_id = pushed("c-8", 1, "2024-03-05T09:00:00Z")
    del no_id["eventId"]
    no_conversation = pushed("c-8", 1, "2024-03-05T09:00:00Z")
    del no_conversation["conversationId"]
    wrong_nps = answered("c-8", "2024-03-05T10:00:00Z", netPromoterScore=11)
    unknown = webhook("visitor.updated", "2024-03-05T10:00:00Z", visitorId="v")
    store(loop, [bad_ids, no_id, no_conversation, wrong_nps, unknown])
    by_name = {}
    for name, status, error, _ in statuses(wh):
        by_name.setdefault(name, []).append((status, error))
    assert [s for s, _ in by_name["v2.conversation.closed"]] == ["rejected"]
    assert "operatorIds" in by_name["v2.conversation.closed"][0][1]
    pushed_errors = sorted(e for _, e in by_name["v2.conversation.pushed"])
    assert [s for s, _ in by_name["v2.conversation.pushed"]] == ["rejected", "rejected"]
    assert any(e.startswith("conversationId") for e in pushed_errors)
    assert any(e.startswith("eventId") for e in pushed_errors)
    assert by_name["satisfaction.answered"][0][0] == "rejected" and "netPromoterScore" in by_name[
        "satisfaction.answered"][0][1]
    assert by_name["visitor.updated"][0][0] == "unhandled"
    assert {name: rows for name, rows in everything(wh).items() if rows} == {}


def _four_byte_text(n: int, seed: int = 1) -> str:
    """n random characters of 4 bytes each in UTF-8 (which compress badly)."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(n))


def test_keys_too_long_for_an_index_and_null_answers_are_rejected_naming_the_field(loop, wh):
    big = _four_byte_text(1000)  # 4000 bytes: more than a btree index entry holds
    fits = _four_byte_text(250, seed=2)  # 1000 bytes: KEY_BYTES
    at = "2024-03-05T09:00:00Z"
    long_conversation = pushed(big, 1, at)
    long_conversation["visitorId"] = "v"
    long_channel = pushed("c-20", 1, at, channel=big)
    long_answer = answered(big, at, netPromoterScore=3)
    long_availability = availability(20, at, ("CHAT", "AVAILABLE"), (big, "AVAILABLE"))
    nulls = [answered("c-20", at, **{field: None}) for field in
             ("netPromoterScore", "customerSatisfaction", "satisfactionComment")]
    # Valid: any channel string, the empty one too; an eventId and a channel of 1000 bytes each.
    empty_channel = pushed("c-21", 1, at, channel="")
    widest = availability(21, at, (fits, "AVAILABLE"), ("", "UNAVAILABLE"), event_id=_four_byte_text(250, seed=3))
    store(loop, [long_conversation, long_channel, long_answer, long_availability, *nulls, empty_channel, widest])

    errors = [error for error, in query(wh, "SELECT error FROM events WHERE status = 'rejected'")]
    assert sorted(errors) == sorted([
        "conversationId: Longer than 1000 bytes in UTF-8.",
        "channel: Longer than 1000 bytes in UTF-8.",
        "conversationId: Longer than 1000 bytes in UTF-8.",
        "availabilities.1.channel: Longer than 1000 bytes in UTF-8.",
        "netPromoterScore: Must be an integer, not null (an event without this answer leaves the field out).",
        "customerSatisfaction: Must be an integer, not null (an event without this answer leaves the field out).",
        "satisfactionComment: Must be a string, not null (an event without this answer leaves the field out).",
    ])
    assert query(wh, "SELECT status, count(*) FROM events GROUP BY 1 ORDER BY 1") == [("processed", 2),
                                                                                     ("rejected", 7)]
    assert conversation_row(wh, "c-21")["channel"] == ""
    assert periods(wh, 21) == [("", "UNAVAILABLE", T(at), None, None), (fits, "AVAILABLE", T(at), None, None)]
    assert query(wh, "SELECT count(*) FROM satisfaction") == [(0,)]


# --- roles ----------------------------------------------------------------------------------------------

def test_the_worker_role_is_enough_and_the_analyst_reads_only(settings, wh, rq):
    loop = Consumer(settings, registry_with_handlers(), name="webhook-roles")
    try:
        with loop.conn.cursor() as cur:
            cur.execute("SET SESSION ROLE pushline_worker")
        loop.conn.commit()
        store(loop, [pushed("c-9", 1, "2024-03-05T09:00:00Z"), closed("c-9", [1], "2024-03-05T09:10:00Z"),
                     answered("c-9", "2024-03-05T09:11:00Z", customerSatisfaction=3),
                     connected(1, "2024-03-05T08:00:00Z"), disconnected(1, "2024-03-05T10:00:00Z"),
                     availability(1, "2024-03-05T08:00:00Z", ("CHAT", "AVAILABLE")),
                     availability(1, "2024-03-05T09:00:00Z", ("CHAT", "UNAVAILABLE"))])
    finally:
        loop.close()
    assert query(wh, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 7)]
    for name in ANALYST_TABLES + ANALYST_VIEWS:
        _, rows = as_role(settings, "analyst", f"SELECT * FROM {name}")
        assert rows, name
        assert sorted(rows, key=repr) == sorted(query(wh, f"SELECT * FROM {name}"), key=repr)
    for sql in ["INSERT INTO conversation_assignments VALUES ('x', 'c', 1, now())",
                "UPDATE conversations_v2 SET assignments = 0", "DELETE FROM satisfaction",
                "TRUNCATE user_sessions", "UPDATE availability_periods SET status = 'x'",
                *(f"SELECT * FROM {side}" for side in (*SIDE_TABLES, "webhook_event_ids"))]:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            as_role(settings, "analyst", sql)


# --- one eventId, one row: whatever the createdAt, the batch, the worker ---------------------------------

def _item(body: dict) -> bytes:
    return Envelope(uuid.uuid4().hex, "default", time.time(), json.dumps(body).encode()).encode()


def test_two_workers_storing_one_event_id_at_two_instants_make_one_row(settings, wh, rq):
    """The second batch meets the first's uncommitted claim, waits for its commit, then
    takes the instant the first stored: one row, two deliveries."""
    first = pushed("c-claim", 7, "2024-03-05T09:00:00Z", event_id="21111111-2222-4333-8444-555555555555")
    later = {**first, "createdAt": "2024-03-06T09:05:00Z", "sentAt": "2024-03-06T09:05:01Z"}
    registry = registry_with_handlers()
    holder, other = connect(settings.database_url, "claim-holder"), connect(settings.database_url, "claim-other")
    try:
        with push_timezone(settings.tzinfo), holder.cursor() as cur:
            write_batch(cur, group_by_key([read_item(_item(first), registry)]))  # not committed yet
        done = []
        thread = threading.Thread(target=lambda: done.append(
            process_items(other, [_item(later)], registry, settings.tzinfo)))
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and not done  # waiting for the holder's claim
        holder.commit()
        thread.join(30)
        assert done and not done[0].dead
    finally:
        holder.close()
        other.close()
    assert query(wh, "SELECT deliveries, created_at FROM events") == [(2, T("2024-03-05T09:00:00Z"))]
    assert query(wh, "SELECT started_at, assignments FROM conversations_v2") == [(T("2024-03-05T09:00:00Z"), 1)]


def test_an_event_id_whose_row_is_gone_is_stored_again_at_the_instant_it_comes_with(loop, wh):
    """Retention deleted the row: the next receipt is stored as it says, and its
    own retries at the old instant are deliveries of the new row."""
    first = pushed("c-gone", 7, "2024-03-05T09:00:00Z", event_id="31111111-2222-4333-8444-555555555555")
    later = {**first, "createdAt": "2024-03-06T09:05:00Z", "sentAt": "2024-03-06T09:05:01Z"}
    store(loop, [first])
    wh.cursor().execute("DELETE FROM events")
    store(loop, [later], [first])
    assert query(wh, "SELECT deliveries, created_at FROM events") == [(2, T("2024-03-06T09:05:00Z"))]
    assert query(wh, "SELECT created_at FROM webhook_event_ids WHERE event_key = %s",
                 event_key(first)) == [(T("2024-03-06T09:05:00Z"),)]


def test_an_event_handled_again_at_another_instant_changes_no_row(loop, wh):
    """The first instant an eventId was folded with stays, as for the side tables
    before: a receipt after retention pruned its row (above: stored again as it
    says) leaves the analyst rows as they were, whatever its createdAt."""
    ids = [f"4{i}111111-2222-4333-8444-555555555555" for i in range(4)]
    first = [pushed("c-again", 1, "2024-03-05T10:00:00Z", event_id=ids[0]),
             pushed("c-again", 2, "2024-03-05T10:30:00Z", event_id=ids[1]),
             closed("c-again", [1, 2], "2024-03-05T11:00:00Z", event_id=ids[2]),
             answered("c-again", "2024-03-05T11:10:00Z", customerSatisfaction=2, event_id=ids[3])]
    store(loop, first)
    before = everything(wh)
    wh.cursor().execute("DELETE FROM events")  # retention
    store(loop, [{**first[0], "createdAt": "2024-03-05T10:45:00Z"}, {**first[2], "createdAt": "2024-03-05T12:00:00Z"},
                 {**first[3], "createdAt": "2024-03-05T12:00:00Z", "customerSatisfaction": 5}])
    assert query(wh, "SELECT count(*) FROM events WHERE status = 'processed'") == [(3,)]
    assert everything(wh) == before
    assert conversation_row(wh, "c-again")["last_operator_id"] == 2


def test_the_migration_claims_the_webhooks_stored_before_it(loop, wh):
    """0020 fills webhook_event_ids from events: the same keys the workers claim."""
    wh.cursor().execute("TRUNCATE webhook_event_ids")  # kept across tests (it outlives events by design)
    bodies = [pushed("c-old", 7, "2024-03-05T09:00:00Z"), connected(3, "2024-03-05T08:00:00+01:00"),
              webhook("visitor.updated", "2024-03-05T09:00:00Z", visitorId="v")]
    store(loop, bodies, [login(5, "2014-01-01 10:00:00")])
    claimed = query(wh, "SELECT event_key::text, created_at FROM webhook_event_ids ORDER BY 1")
    assert len(claimed) == 3
    text = (Path(__file__).parent.parent / "migrations" / "0020.webhook-event-ids.sql").read_text()
    backfill = text[text.index("INSERT INTO webhook_event_ids"):text.index(";", text.index("INSERT INTO webhook"))]
    wh.cursor().execute("TRUNCATE webhook_event_ids")
    wh.cursor().execute(backfill)
    assert query(wh, "SELECT event_key::text, created_at FROM webhook_event_ids ORDER BY 1") == claimed


# --- concurrency and rebuild -------------------------------------------------------------------------------

def _stream() -> tuple[list[dict], dict]:
    """Events of a few conversations and users, and the rows they must give."""
    bodies = []
    for user in range(1, 7):
        bodies += [connected(user, "2024-03-05T08:00:00Z"), disconnected(user, "2024-03-05T09:00:00Z"),
                   connected(user, "2024-03-05T10:00:00Z"), disconnected(user, "2024-03-05T10:30:00Z"),
                   availability(user, "2024-03-05T08:00:00Z", ("CHAT", "AVAILABLE"), ("CALL", "AVAILABLE")),
                   availability(user, "2024-03-05T08:30:00Z", ("CHAT", "UNAVAILABLE")),
                   availability(user, "2024-03-05T09:00:00Z", ("CALL", "UNAVAILABLE"))]
    for c in range(4):
        bodies += [pushed(f"cc-{c}", op, f"2024-03-05T09:0{op}:00Z") for op in range(1, 6)]
        bodies += [closed(f"cc-{c}", [1, 2, 3, 4, 5], "2024-03-05T09:20:00Z"),
                   answered(f"cc-{c}", "2024-03-05T09:21:00Z", netPromoterScore=c * 3)]
    return bodies, {
        "sessions": [(1800.0, 6), (3600.0, 6)],
        "periods": [("AVAILABLE", 1800.0, 6), ("AVAILABLE", 3600.0, 6), ("UNAVAILABLE", None, 12)],
        "conversations": [(5, 1, 5, [1, 2, 3, 4, 5], 1140.0)] * 4,  # 09:01 to 09:20
        "nps": [(0,), (3,), (6,), (9,)],
    }


def _summary(db) -> dict:
    return {
        "sessions": query(db, "SELECT duration_seconds, count(*) FROM user_sessions GROUP BY 1 ORDER BY 1"),
        "periods": query(db, "SELECT status, duration_seconds, count(*) FROM availability_periods GROUP BY 1, 2"
                             " ORDER BY 1, 2"),
        "conversations": query(db, "SELECT assignments, operator_id, last_operator_id, operator_ids, duration_seconds"
                                   " FROM conversations_v2 ORDER BY conversation_id"),
        "nps": query(db, "SELECT net_promoter_score FROM satisfaction ORDER BY 1"),
    }


def test_concurrent_workers_on_the_same_conversations_and_users(database_url, redis_url, wh, rq):
    bodies, expected = _stream()
    bodies = bodies[::2] + bodies[1::2]  # interleaved, so that every batch has events of every user
    settings = make_settings(database_url, redis_url, PUSHLINE_BATCH_SIZE="4")
    loops = [Consumer(settings, registry_with_handlers(), name=f"concurrent-{i}") for i in range(4)]
    enqueue(loops[0].queue, *bodies)
    errors = []

    def run(loop):
        try:
            drain(loop)
        except Exception as exc:  # reported below, with the thread's loop
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(loop,)) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for loop in loops:
        loop.close()
    assert not errors
    assert query(wh, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", len(bodies))]
    assert _summary(wh) == expected


def test_rebuild_restores_the_webhook_tables(settings, loop, wh):
    bodies, expected = _stream()
    store(loop, bodies[40:], bodies[:40])
    before = everything(wh)
    assert _summary(wh) == expected
    conn = connect(settings.database_url, "test-rebuild", TOOL)
    try:
        # Replaying processed events changes nothing that was right.
        replay(conn, registry_with_handlers(), settings.tzinfo, Selection(statuses=None))
        assert everything(wh) == before

        wh.cursor().execute(f"TRUNCATE {', '.join(ANALYST_TABLES + SIDE_TABLES)}")
        wh.cursor().execute("INSERT INTO satisfaction (conversation_id, net_promoter_score) VALUES ('stray', 1)")
        rebuild(conn, registry_with_handlers(), settings.tzinfo)
    finally:
        conn.close()
    assert everything(wh) == before



class _PushedBeforeKeyBytes(ConversationPushed):
    """v2.conversation.pushed as loaded before keys were bounded in bytes: 1000
    characters of 4 bytes passed, and the database then refused the rows."""

    conversation_id = fields.String(data_key="conversationId", required=True)


def _registry_before_key_bytes() -> Registry:
    copy = Registry()
    copy._handlers = dict(registry_with_handlers()._handlers)
    handler = copy._handlers["v2.conversation.pushed"]
    copy._handlers["v2.conversation.pushed"] = dataclasses.replace(handler, schema=_PushedBeforeKeyBytes())
    return copy


def test_replay_and_rebuild_go_on_past_an_event_the_database_refuses(settings, wh, rq):
    """One event whose rows the database refuses is rejected with the reason; the
    events around it, in its page, are replayed and rebuilt all the same."""
    before_fix = _registry_before_key_bytes()
    poison = pushed(_four_byte_text(1000), 1, "2024-03-05T09:00:00Z")
    poison["visitorId"] = "v"
    bodies, expected = _stream()
    loop = Consumer(settings, before_fix, name="webhook-poison")
    try:
        store(loop, [*bodies[:30], poison, *bodies[30:]])
    finally:
        loop.close()
    poison_row = "SELECT status, error FROM events WHERE payload->>'eventId' = %s"
    (status, error), = query(wh, poison_row, poison["eventId"])
    assert status == "rejected" and error.startswith("handler: ProgramLimitExceeded")  # isolated by workers/batch.py
    assert _summary(wh) == expected
    rows = everything(wh)

    conn = connect(settings.database_url, "test-poison", TOOL)
    try:
        # The schemas that let it through load it again: its handler fails again, under its own savepoint.
        counts = replay(conn, before_fix, settings.tzinfo, Selection(statuses=None))
        assert counts == {"processed->processed": len(bodies), "rejected->rejected": 1}
        assert everything(wh) == rows
        counts = rebuild(conn, before_fix, settings.tzinfo)
        assert counts == {"processed->processed": len(bodies), "rejected->rejected": 1}
        assert everything(wh) == rows
        (status, error), = query(wh, poison_row, poison["eventId"])
        assert status == "rejected" and error.startswith("handler: ProgramLimitExceeded")

        # Today's schemas reject it, naming the field.
        assert replay(conn, registry_with_handlers(), settings.tzinfo) == {"rejected->rejected": 1}
    finally:
        conn.close()
    assert query(wh, poison_row, poison["eventId"]) == [
        ("rejected", "conversationId: Longer than 1000 bytes in UTF-8.")]
    assert everything(wh) == rows
