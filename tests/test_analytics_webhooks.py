"""docs/analytics.md's questions on today's webhooks, on known data, answers worked out by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.helpers import answered, availability, closed, connected, disconnected, drain, enqueue, pushed
from tests.test_analytics import as_analyst, doc_query
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers

C1, C2, C3, C4, C5 = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 6))
DAY = "2024-03-05T"

KNOWN = [
    # C1: pushed to 10, transferred to 11 then 12 (3 assignments), closed after 30 min.
    pushed(C1, 10, DAY + "09:00:00Z"), pushed(C1, 11, DAY + "09:05:00Z"), pushed(C1, 12, DAY + "09:10:00Z"),
    closed(C1, [10, 11, 12], DAY + "09:30:00Z"),
    pushed(C2, 10, DAY + "10:00:00Z"), closed(C2, [10], DAY + "10:20:00Z"),  # 20 min
    pushed(C3, 11, DAY + "11:00:00Z", channel="CALL", project=2),
    closed(C3, [11], DAY + "11:20:00Z", channel="CALL", project=2),  # 20 min
    pushed(C4, 12, DAY + "12:00:00Z", project=2),  # never closed
    pushed(C5, 11, DAY + "13:00:00Z", channel="CALL", project=2),
    # One field per answer click, as iAdvize sends them.
    answered(C1, DAY + "09:31:00Z", customerSatisfaction=5), answered(C1, DAY + "09:31:10Z", netPromoterScore=10),
    answered(C1, DAY + "09:31:20Z", satisfactionComment="great"),
    answered(C2, DAY + "10:21:00Z", customerSatisfaction=3), answered(C2, DAY + "10:21:10Z", netPromoterScore=6),
    answered(C3, DAY + "11:21:00Z", project=2, customerSatisfaction=4),
    answered(C3, DAY + "11:21:10Z", project=2, netPromoterScore=9),
    answered(C4, DAY + "12:30:00Z", project=2, customQuestion=True),  # no score: nothing to count
    answered(C5, DAY + "13:30:00Z", project=2, customerSatisfaction=2),
    answered(C5, DAY + "13:30:10Z", project=2, netPromoterScore=7),
    # User 10: 4 h connected; CHAT available 08:00-09:00 and 09:30-11:00 (2.5 h).
    connected(10, DAY + "08:00:00Z"), disconnected(10, DAY + "12:00:00Z"),
    availability(10, DAY + "08:00:00Z", ("CHAT", "AVAILABLE"), ("CALL", "UNAVAILABLE")),
    availability(10, DAY + "09:00:00Z", ("CHAT", "UNAVAILABLE")),
    availability(10, DAY + "09:30:00Z", ("CHAT", "AVAILABLE")),
    availability(10, DAY + "11:00:00Z", ("CHAT", "UNAVAILABLE")),
    # User 11: 1 h connected; CHAT available 09:00-09:15, CALL 09:00-09:45: 45 min with one at least.
    connected(11, DAY + "09:00:00Z"), disconnected(11, DAY + "10:00:00Z"),
    availability(11, DAY + "09:00:00Z", ("CHAT", "AVAILABLE"), ("CALL", "AVAILABLE")),
    availability(11, DAY + "09:15:00Z", ("CHAT", "UNAVAILABLE")),
    availability(11, DAY + "09:45:00Z", ("CALL", "UNAVAILABLE")),
]


@pytest.fixture
def known(settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="analytics-webhooks")
    enqueue(loop.queue, *KNOWN)
    drain(loop)
    loop.close()
    return db


def test_every_known_webhook_was_processed(known):
    with known.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM events GROUP BY 1")
        assert cur.fetchall() == [("processed", len(KNOWN))]


def test_q6_transfers_per_conversation(known):
    assert as_analyst(known, doc_query(6)) == [
        (C1, "CHAT", 2, 10, 12), (C2, "CHAT", 0, 10, 10), (C3, "CALL", 0, 11, 11), (C4, "CHAT", 0, 12, 12),
        (C5, "CALL", 0, 11, 11)]


def test_q7_time_to_close_by_channel(known):
    assert as_analyst(known, doc_query(7)) == [("CALL", 1, Decimal("20.0")), ("CHAT", 2, Decimal("25.0"))]


def test_q8_csat_and_nps_by_project(known):
    # Project 1: CSAT 5 and 3; NPS 10 (promoter) and 6 (detractor): 0.
    # Project 2: CSAT 4 and 2; NPS 9 (promoter) and 7 (passive): 100 x 1 / 2 = 50.
    assert as_analyst(known, doc_query(8)) == [
        (1, 2, Decimal("4.00"), 2, Decimal("0.0")), (2, 2, Decimal("3.00"), 2, Decimal("50.0"))]


def test_q9_connected_versus_available_time_per_user(known):
    assert as_analyst(known, doc_query(9)) == [
        (10, Decimal("4.00"), Decimal("2.50"), Decimal("0.63")),
        (11, Decimal("1.00"), Decimal("0.75"), Decimal("0.75"))]
