"""CONTRACT 5, rule by rule: each example is stored in several orders and
batchings through the real drain loop, and must give the rows the rule says
(and the oracle agrees)."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from tests import oracle
from tests.conftest import query
from tests.helpers import conversation, drain, enqueue, login, logout
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers


def T(hms: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"2014-01-01T{hms}+00:00")


def t(hms: str) -> str:
    return f"2014-01-01 {hms}"


def orders(events: list[dict]):
    """All in one batch, one per batch forwards and backwards, and shuffles."""
    yield "one-batch", [events]
    yield "forwards", [[e] for e in events]
    yield "backwards", [[e] for e in reversed(events)]
    rng = random.Random(len(events))
    for n in range(3):
        shuffled = events[:]
        rng.shuffle(shuffled)
        cut = rng.randrange(1, len(events) + 1)
        yield f"shuffle-{n}", [shuffled[:cut], shuffled[cut:]]


@pytest.fixture(autouse=True)
def no_horizons(db):
    """A prune's per-operator horizons (which the db fixture leaves) would hide sessions here."""
    db.cursor().execute("TRUNCATE operator_horizons")


@pytest.fixture
def store(settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="semantics")

    def run(events: list[dict]):
        results = []
        for label, batches in orders(events):
            with db.cursor() as cur:
                cur.execute("TRUNCATE events, conversations, operator_sessions, operator_events, operator_horizons")
            for batch in batches:
                if batch:
                    enqueue(loop.queue, *batch)
                    drain(loop)
            results.append((label, oracle.read_tables(db)))
        return results

    yield run
    loop.close()


def assert_sessions(store, events, expected):
    assert oracle.operator_sessions(events) == sorted(expected, key=oracle.session_order)
    for label, (_, sessions) in store(events):
        assert sessions == sorted(expected, key=oracle.session_order), label


def test_each_login_opens_a_session_closed_by_the_first_logout(store):
    events = [login(1, t("09:00:00")), logout(1, t("10:00:00")), login(1, t("11:00:00")), logout(1, t("12:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), T("10:00:00")), (1, T("11:00:00"), T("12:00:00"))])


def test_a_logout_received_before_its_login_still_closes_it(store):
    events = [logout(1, t("10:00:00")), login(1, t("09:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), T("10:00:00"))])


def test_a_missed_logout_leaves_logout_at_null_when_the_next_login_comes_first(store):
    events = [login(1, t("09:00:00")), login(1, t("11:00:00")), logout(1, t("12:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), None), (1, T("11:00:00"), T("12:00:00"))])


def test_a_logout_that_closes_nothing_is_a_row_without_login(store):
    events = [logout(1, t("08:00:00")), login(1, t("09:00:00")), logout(1, t("10:00:00")), logout(1, t("10:30:00"))]
    assert_sessions(store, events, [(1, None, T("08:00:00")), (1, T("09:00:00"), T("10:00:00")),
                                    (1, None, T("10:30:00"))])


def test_login_and_logout_at_the_same_time_with_no_open_session_is_a_zero_length_session(store):
    events = [login(1, t("09:00:00")), logout(1, t("09:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), T("09:00:00"))])


def test_login_and_logout_at_the_same_time_with_a_session_open_closes_the_open_one(store):
    events = [login(1, t("08:00:00")), login(1, t("09:00:00")), logout(1, t("09:00:00"))]
    assert_sessions(store, events, [(1, T("08:00:00"), T("09:00:00")), (1, T("09:00:00"), None)])


def test_a_late_login_splits_a_session_it_falls_inside(store):
    events = [login(1, t("09:00:00")), logout(1, t("12:00:00")), login(1, t("10:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), None), (1, T("10:00:00"), T("12:00:00"))])


def test_operators_are_paired_independently(store):
    events = [login(1, t("09:00:00")), login(2, t("09:30:00")), logout(1, t("10:00:00")), logout(2, t("11:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), T("10:00:00")), (2, T("09:30:00"), T("11:00:00"))])


def test_duplicates_of_an_event_count_once_in_pairing(store):
    events = [login(1, t("09:00:00")), login(1, t("09:00:00"), sent=t("09:00:05")), logout(1, t("10:00:00"))]
    assert_sessions(store, events, [(1, T("09:00:00"), T("10:00:00"))])


START = dict(type_="chat", op=5, website=6, group=7, custom_data={"k": "v"})
END = dict(type_="call", op=8, website=9, group=10)


def conv_rows(store, events):
    expected = oracle.conversations(events)
    for label, (convs, _) in store(events):
        assert convs == expected, label
    return expected


def test_conversation_end_before_its_start_gives_start_attributes_and_both_times(store):
    rows = conv_rows(store, [conversation("end", 1, t("10:05:00"), **END),
                             conversation("start", 1, t("10:00:00"), **START)])
    assert rows[1] == {"type": "chat", "operator_id": 5, "website_id": 6, "group_id": 7, "custom_data": {"k": "v"},
                       "started_at": T("10:00:00"), "ended_at": T("10:05:00"), "duration_seconds": 300.0}


def test_conversation_with_only_an_end_takes_the_end_attributes(store):
    rows = conv_rows(store, [conversation("end", 2, t("10:05:00"), **END)])
    assert rows[2]["type"] == "call" and rows[2]["group_id"] == 10
    assert rows[2]["started_at"] is None and rows[2]["duration_seconds"] is None


def test_started_at_is_the_earliest_start_and_ended_at_the_latest_end(store):
    rows = conv_rows(store, [conversation("start", 3, t("10:01:00"), **START),
                             conversation("start", 3, t("10:00:00"), **START),
                             conversation("end", 3, t("10:09:00"), **END),
                             conversation("end", 3, t("10:10:00"), **END)])
    assert (rows[3]["started_at"], rows[3]["ended_at"]) == (T("10:00:00"), T("10:10:00"))
    assert rows[3]["duration_seconds"] == 600.0


def test_conversation_with_only_a_start_has_no_duration(store):
    rows = conv_rows(store, [conversation("start", 4, t("10:00:00"), **START)])
    assert rows[4]["ended_at"] is None and rows[4]["duration_seconds"] is None


def test_push_timezone_applies_to_naive_datetimes(settings, db, rq):
    from tests.conftest import make_settings

    paris = make_settings(settings.database_url, settings.redis_url, PUSH_TIMEZONE="Europe/Paris")
    loop = Consumer(paris, registry_with_handlers(), name="tz")
    enqueue(loop.queue, login(1, "2014-07-01 09:00:00"), logout(1, "2014-07-01T09:30:00+00:00"))
    drain(loop)
    loop.close()
    assert query(db, "SELECT login_at, logout_at FROM operator_sessions") == [
        (dt.datetime(2014, 7, 1, 7, tzinfo=dt.UTC), dt.datetime(2014, 7, 1, 9, 30, tzinfo=dt.UTC))]


# -- ties the contract leaves open -------------------------------------------------------------
# Several starts of a conversation at its earliest time (or, with no start, several ends at its
# latest) that differ: CONTRACT 5 does not say which gives the attributes, only that the rows are
# a function of the SET of events. So every order must give the same row, and that row must be
# one of the candidates (oracle.OneOf), its attributes all from one event.

TIED = [
    # conversation 5: three different starts at the earliest time, a later start, an end
    conversation("start", 5, t("10:00:00"), type_="chat", op=51, website=52, group=53, custom_data={"v": 1}),
    conversation("start", 5, t("10:00:00"), type_="call", op=61, website=62, group=63, custom_data={"v": 2}),
    conversation("start", 5, t("10:00:00"), type_="video", op=71, website=72, group=73),
    conversation("start", 5, t("10:01:00"), type_="chat", op=81, website=82, group=83, custom_data={"v": 3}),
    conversation("end", 5, t("10:10:00"), type_="call", op=91, website=92, group=93),
    # conversation 6: no start; two different ends at the latest time, and an earlier one
    conversation("end", 6, t("11:00:00"), type_="chat", op=1, website=2, group=3),
    conversation("end", 6, t("11:20:00"), type_="call", op=4, website=5, group=6),
    conversation("end", 6, t("11:20:00"), type_="video", op=7, website=8, group=9),
    # conversation 7: a start and an end at the same time: the contract says the start gives them
    conversation("end", 7, t("12:00:00"), type_="call", op=7, website=7, group=7),
    conversation("start", 7, t("12:00:00"), type_="video", op=8, website=8, group=8),
]


def test_the_oracle_breaks_no_tie_by_input_order():
    rng = random.Random(5)
    expected = oracle.conversations(TIED)
    for _ in range(20):
        shuffled = TIED[:]
        rng.shuffle(shuffled)
        assert oracle.conversations(shuffled) == expected
        assert oracle.operator_sessions(shuffled) == oracle.operator_sessions(TIED)
    # The open ties are exactly the tied events; what the contract fixes is one plain row.
    assert isinstance(expected[5], oracle.OneOf)
    assert sorted(c["operator_id"] for c in expected[5].candidates) == [51, 61, 71]
    assert {(c["started_at"], c["ended_at"]) for c in expected[5].candidates} == {(T("10:00:00"), T("10:10:00"))}
    assert isinstance(expected[6], oracle.OneOf)
    assert sorted(c["operator_id"] for c in expected[6].candidates) == [4, 7]
    assert all(c["custom_data"] is None and c["started_at"] is None for c in expected[6].candidates)
    assert expected[7] == {"type": "video", "operator_id": 8, "website_id": 8, "group_id": 8, "custom_data": None,
                           "started_at": T("12:00:00"), "ended_at": T("12:00:00"), "duration_seconds": 0.0}
    # A OneOf takes any candidate and nothing else.
    row = dict(expected[5].candidates[1])
    assert row == expected[5]
    assert {**row, "custom_data": {"v": 3}} != expected[5]


def tied_orders():
    yield from orders(TIED)
    rng = random.Random(17)
    for n in range(6):
        shuffled = TIED[:]
        rng.shuffle(shuffled)
        yield f"one-by-one-{n}", [[e] for e in shuffled]


def test_tied_starts_and_ends_give_one_row_whatever_the_order(settings, db, rq):
    expected = oracle.conversations(TIED)
    loop = Consumer(settings, registry_with_handlers(), name="ties")
    seen = {}
    try:
        for label, batches in tied_orders():
            with db.cursor() as cur:
                cur.execute("TRUNCATE events, conversations, operator_sessions, operator_events, operator_horizons")
            for batch in batches:
                if batch:
                    enqueue(loop.queue, *batch)
                    drain(loop)
            convs, _ = oracle.read_tables(db)
            assert convs == expected, label
            # attrs_* name the event the attributes came from (README, Tables).
            for cid, source, params, same_time in query(db, """
                    SELECT c.conversation_id, c.attrs_from, e.payload->'parameters',
                           e.created_at = c.attrs_created_at AND e.name = 'conversation.' || c.attrs_from
                    FROM conversations c LEFT JOIN events e ON e.event_key = c.attrs_event_key"""):
                assert params is not None and same_time, (label, cid)
                assert {k: params.get(k) for k in ("type", "operator_id", "website_id", "group_id")} == {
                    k: convs[cid][k] for k in ("type", "operator_id", "website_id", "group_id")}, (label, cid)
                assert source == ("end" if cid == 6 else "start"), (label, cid)
            seen[label] = convs
    finally:
        loop.close()
    first_label, first = next(iter(seen.items()))
    for label, convs in seen.items():
        assert convs == first, f"{label} and {first_label} chose different events for the same set"
