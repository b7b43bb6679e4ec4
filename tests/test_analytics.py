"""The analyst views on known data, and every query of docs/analytics.md."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from tests.conftest import ROOT, query
from tests.helpers import conversation, drain, enqueue, login, logout
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers

D1, D2 = dt.date(2014, 1, 1), dt.date(2014, 1, 2)

KNOWN = [
    login(1, "2014-01-01 22:30:00"), logout(1, "2014-01-02 01:30:00"),  # across midnight
    login(2, "2014-01-01 09:00:00"), logout(2, "2014-01-01 10:00:00"), login(2, "2014-01-01 11:00:00"),
    conversation("start", 1, "2014-01-01 09:00:00", op=2, website=1), conversation("end", 1, "2014-01-01 09:10:00",
                                                                                   op=2, website=1),
    conversation("start", 2, "2014-01-01 09:05:00", op=2, website=1), conversation("end", 2, "2014-01-01 09:20:00",
                                                                                   op=2, website=1),
    conversation("start", 3, "2014-01-01 23:00:00", type_="call", op=1, website=2),
    conversation("end", 3, "2014-01-01 23:30:00", type_="call", op=1, website=2),
    conversation("start", 4, "2014-01-01 09:30:00", op=2, website=1),
]


@pytest.fixture
def known(settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="analytics")
    enqueue(loop.queue, *KNOWN)
    drain(loop)
    loop.close()
    return db


def doc_query(n: int) -> str:
    text = (ROOT / "docs" / "analytics.md").read_text()
    return re.search(rf"```sql\n-- q{n}\n(.*?)```", text, re.S).group(1)


def as_analyst(db, sql: str):
    with db.cursor() as cur:
        cur.execute("SET ROLE analyst")
        try:
            cur.execute(sql)
            return cur.fetchall()
        finally:
            cur.execute("RESET ROLE")


def test_operator_daily_splits_a_session_at_midnight(known):
    rows = query(known, "SELECT operator_id, day, sessions, online_seconds, conversations FROM operator_daily"
                        " ORDER BY day, operator_id")
    assert rows == [(1, D1, 1, 5400.0, 1), (2, D1, 2, 3600.0, 3), (1, D2, 0, 5400.0, 0)]


def test_conversation_daily(known):
    rows = query(known, "SELECT day, website_id, type, conversations, ended, avg_duration_seconds"
                        " FROM conversation_daily ORDER BY website_id")
    assert rows == [(D1, 1, "chat", 3, 2, 750.0), (D1, 2, "call", 1, 1, 1800.0)]


def test_operator_presence_splits_sessions_by_hour(known):
    rows = query(known, "SELECT operator_id, hour, online_seconds FROM operator_presence ORDER BY operator_id, hour")
    h = dt.datetime
    assert rows == [(1, h(2014, 1, 1, 22), 1800.0), (1, h(2014, 1, 1, 23), 3600.0), (1, h(2014, 1, 2, 0), 3600.0),
                    (1, h(2014, 1, 2, 1), 1800.0), (2, h(2014, 1, 1, 9), 3600.0)]


def test_conversation_concurrency_counts_overlapping_minutes(known):
    rows = dict(((w, m.strftime("%H:%M")), n) for w, m, n in
                query(known, "SELECT website_id, minute, conversations FROM conversation_concurrency"))
    assert rows[1, "09:04"] == 1 and rows[1, "09:05"] == 2 and rows[1, "09:09"] == 2 and rows[1, "09:10"] == 1
    assert rows[1, "09:19"] == 1 and (1, "09:20") not in rows and (1, "09:30") not in rows  # no end: not counted
    assert rows[2, "23:00"] == 1 and len([k for k in rows if k[0] == 2]) == 30


def test_a_session_ending_at_midnight_adds_no_empty_day(settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="midnight")
    enqueue(loop.queue, login(7, "2014-01-01 23:00:00"), logout(7, "2014-01-02 00:00:00"))
    drain(loop)
    loop.close()
    assert query(db, "SELECT day, online_seconds FROM operator_daily WHERE operator_id = 7") == [(D1, 3600.0)]


def test_views_use_push_timezone(known):
    with known.cursor() as cur:
        cur.execute("UPDATE pushline_config SET timezone = 'Asia/Tokyo'")  # UTC+9: 22:30 UTC is 07:30 next day
    try:
        rows = query(known, "SELECT operator_id, day, online_seconds FROM operator_daily WHERE operator_id = 1")
        assert rows == [(1, D2, 10800.0)]
    finally:
        with known.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = 'UTC'")


def test_doc_q1_hours_online_per_day(known):
    assert as_analyst(known, doc_query(1)) == [(1, D1, Decimal("1.50"), 1), (2, D1, Decimal("1.00"), 2),
                                                (1, D2, Decimal("1.50"), 0)]


def test_doc_q2_average_chat_duration(known):
    assert as_analyst(known, doc_query(2)) == [(D1, 1, 2, Decimal("750.0"))]


def test_doc_q3_peak_concurrency(known):
    assert as_analyst(known, doc_query(3)) == [(1, D1, 2), (2, D1, 1)]


def test_doc_q4_busiest_hours(known):
    assert as_analyst(known, doc_query(4)) == [(0, Decimal("1.00")), (9, Decimal("1.00")), (23, Decimal("1.00"))]


def test_doc_q5_conversations_per_online_hour(known):
    assert as_analyst(known, doc_query(5)) == [(1, 1, Decimal("0.33")), (2, 3, Decimal("3.00"))]
