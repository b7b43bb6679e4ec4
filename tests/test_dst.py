"""Daylight-saving days: the analyst views, and one rule for ambiguous local times.

Europe/Paris, 2025: on 30 March the clocks go from 02:00 CET (+01) to 03:00 CEST
(+02) at 01:00 UTC, so 02:00-03:00 local never happens and the day lasts 23 hours;
on 26 October they go back from 03:00 CEST to 02:00 CET at 01:00 UTC, so
02:00-03:00 local happens twice (00:00-01:00 UTC, then 01:00-02:00 UTC) and the
day lasts 25 hours. Every expected number below is worked out by hand from that
calendar. Instants are written with their offset (+02 = CEST, +01 = CET).

The rule for a local time with two readings (PostgreSQL's, adopted by
schemas.fields.localize): the reading with the smaller UTC offset.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from schemas.fields import localize, parse_push_datetime, push_timezone
from tests.conftest import examples, make_settings, query
from tests.helpers import drain, enqueue, login, logout
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers

PARIS = ZoneInfo("Europe/Paris")
UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def zone(db):
    """Sets the views' zone (pushline_config, shared by the whole suite) and puts the old one back."""
    (before,), = query(db, "SELECT timezone FROM pushline_config")

    def set_zone(name: str):
        with db.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = %s", (name,))
        return db

    try:
        yield set_zone
    finally:
        set_zone(before)


@pytest.fixture
def paris(zone):
    return zone("Europe/Paris")


def sessions(db, *rows: tuple[int, str, str]) -> None:
    with db.cursor() as cur:
        for op, login_at, logout_at in rows:
            cur.execute("INSERT INTO operator_sessions (operator_id, login_at, logout_at)"
                        " VALUES (%s, %s::timestamptz, %s::timestamptz)", (op, login_at, logout_at))


def conversations(db, *rows: tuple[int, int, str, str | None]) -> None:
    with db.cursor() as cur:
        for cid, website, started, ended in rows:
            cur.execute("""INSERT INTO conversations (conversation_id, type, operator_id, website_id, group_id,
                                                      started_at, ended_at, attrs_from, attrs_created_at,
                                                      attrs_event_key)
                           VALUES (%s, 'chat', %s, %s, 1, %s::timestamptz, %s::timestamptz, 'start',
                                   %s::timestamptz, %s)""",
                        (cid, cid, website, started, ended, started, str(uuid.uuid4())))


def presence(db, op: int) -> list[tuple[str, float]]:
    return [(hour.strftime("%m-%d %H:%M"), seconds) for hour, seconds in
            query(db, "SELECT hour, online_seconds FROM operator_presence WHERE operator_id = %s ORDER BY hour", op)]


def concurrency(db, website: int) -> dict[str, int]:
    return {minute.strftime("%m-%d %H:%M"): n for minute, n in
            query(db, "SELECT minute, conversations FROM conversation_concurrency WHERE website_id = %s", website)}


def minutes(day: str, hour: int, first: int, last: int) -> list[str]:
    return [f"{day} {hour:02d}:{m:02d}" for m in range(first, last + 1)]


# --- operator_presence ------------------------------------------------------------------------

def test_presence_in_the_repeated_autumn_hour(paris):
    sessions(paris,
             (1, "2025-10-26 02:30+02", "2025-10-26 02:15+01"),  # 00:30-01:15 UTC: 45 minutes, all in local 02h
             (2, "2025-10-26 01:30+02", "2025-10-26 03:30+01"),  # 3 hours: 30 min, both 02h (2 h), 30 min
             (3, "2025-10-26 02:30+02", "2025-10-26 02:00+01"),  # ends on the change: 30 minutes
             (4, "2025-10-26 02:10+01", "2025-10-26 02:20+01"))  # second 02h only
    assert presence(paris, 1) == [("10-26 02:00", 2700.0)]
    assert presence(paris, 2) == [("10-26 01:00", 1800.0), ("10-26 02:00", 7200.0), ("10-26 03:00", 1800.0)]
    assert presence(paris, 3) == [("10-26 02:00", 1800.0)]
    assert presence(paris, 4) == [("10-26 02:00", 600.0)]


def test_presence_over_the_25_hour_day(paris):
    sessions(paris, (1, "2025-10-26 00:00+02", "2025-10-27 00:00+01"))  # 22:00 UTC to 23:00 UTC next day: 25 h
    expected = [(f"10-26 {h:02d}:00", 7200.0 if h == 2 else 3600.0) for h in range(24)]
    assert presence(paris, 1) == expected
    assert sum(s for _, s in expected) == 25 * 3600


def test_presence_skips_the_missing_spring_hour(paris):
    sessions(paris,
             (1, "2025-03-30 01:30+01", "2025-03-30 03:30+02"),  # 00:30-01:30 UTC: one hour, no local 02h
             (2, "2025-03-30 00:00+01", "2025-03-31 00:00+02"),  # the whole 23-hour day
             (3, "2025-03-30 01:59+01", "2025-03-30 03:00+02"))  # ends on the change: 1 minute
    assert presence(paris, 1) == [("03-30 01:00", 1800.0), ("03-30 03:00", 1800.0)]
    assert presence(paris, 2) == [(f"03-30 {h:02d}:00", 3600.0) for h in range(24) if h != 2]
    assert presence(paris, 3) == [("03-30 01:00", 60.0)]


def test_presence_when_the_change_is_inside_a_local_hour(zone):
    """Pacific/Chatham changes at 02:45 standard time (+12:45 <-> +13:45)."""
    db = zone("Pacific/Chatham")
    sessions(db,
             # 28 Sep 2025, 02:45 -> 03:45: 02:00-02:45, 03:45-04:00, 04:00-04:30 (13:15-14:45 UTC)
             (1, "2025-09-28 02:00+12:45", "2025-09-28 04:30+13:45"),
             # 6 Apr 2025, 03:45 -> 02:45: 03:00-03:45, 02:45-03:00, 03:00-03:30 (13:15-14:45 UTC)
             (2, "2025-04-06 03:00+13:45", "2025-04-06 03:30+12:45"),
             # logs in just after the jump: 03:50-04:10
             (3, "2025-09-28 03:50+13:45", "2025-09-28 04:10+13:45"))
    assert presence(db, 1) == [("09-28 02:00", 2700.0), ("09-28 03:00", 900.0), ("09-28 04:00", 1800.0)]
    assert presence(db, 2) == [("04-06 02:00", 900.0), ("04-06 03:00", 4500.0)]
    assert presence(db, 3) == [("09-28 03:00", 600.0), ("09-28 04:00", 600.0)]


def test_presence_when_the_change_is_30_minutes(zone):
    """Australia/Lord_Howe: +10:30 standard, +11 in summer; local hours start at :30 UTC, then :00."""
    db = zone("Australia/Lord_Howe")
    sessions(db,
             # 5 Oct 2025, 02:00 -> 02:30: 01:00-02:00, 02:30-03:00, 03:00-04:00 (14:30-17:00 UTC)
             (1, "2025-10-05 01:00+10:30", "2025-10-05 04:00+11"),
             # 6 Apr 2025, 02:00 -> 01:30: 01:00-02:00, 01:30-02:00, 02:00-03:00 (14:00-16:30 UTC)
             (2, "2025-04-06 01:00+11", "2025-04-06 03:00+10:30"))
    assert presence(db, 1) == [("10-05 01:00", 3600.0), ("10-05 02:00", 1800.0), ("10-05 03:00", 3600.0)]
    assert presence(db, 2) == [("04-06 01:00", 5400.0), ("04-06 02:00", 3600.0)]


# --- operator_daily ---------------------------------------------------------------------------

def test_operator_daily_on_the_23_and_25_hour_days(paris):
    sessions(paris,
             (1, "2025-10-26 00:00+02", "2025-10-27 00:00+01"),  # the whole autumn day: 25 h
             (2, "2025-10-25 23:00+02", "2025-10-26 04:00+01"),  # 1 h on the 25th, 00:00-04:00 = 5 h on the 26th
             (3, "2025-03-30 00:00+01", "2025-03-31 00:00+02"),  # the whole spring day: 23 h
             (4, "2025-03-29 22:00+01", "2025-03-30 04:00+02"),  # 2 h on the 29th, 00:00-04:00 = 3 h on the 30th
             (5, "2025-10-26 02:30+02", "2025-10-26 02:15+01"))  # 45 min inside the repeated hour
    conversations(paris,
                  (1, 1, "2025-10-26 00:30+02", None),  # 22:30 UTC on the 25th, but the 26th in Paris
                  (4, 1, "2025-03-30 23:30+02", None))  # 21:30 UTC
    rows = query(paris, "SELECT operator_id, day, sessions, online_seconds, conversations FROM operator_daily"
                        " ORDER BY operator_id, day")
    d = dt.date
    assert rows == [(1, d(2025, 10, 26), 1, 90000.0, 1),
                    (2, d(2025, 10, 25), 1, 3600.0, 0), (2, d(2025, 10, 26), 0, 18000.0, 0),
                    (3, d(2025, 3, 30), 1, 82800.0, 0),
                    (4, d(2025, 3, 29), 1, 7200.0, 0), (4, d(2025, 3, 30), 0, 10800.0, 1),
                    (5, d(2025, 10, 26), 1, 2700.0, 0)]


def test_operator_daily_when_midnight_happens_twice(zone):
    """America/Havana goes back from 01:00 CDT (-04) to 00:00 CST (-05): 3 November 2024 begins at its
    first midnight (04:00 UTC) and lasts 25 hours; on 9 March 2025 it jumps from 00:00 to 01:00."""
    db = zone("America/Havana")
    sessions(db,
             (1, "2024-11-02 23:30-04", "2024-11-03 00:30-05"),  # 30 min on the 2nd, 1 h + 30 min on the 3rd
             (2, "2024-11-03 00:00-04", "2024-11-04 00:00-05"),  # the whole 25-hour day
             (3, "2024-11-03 00:30-04", "2024-11-03 00:10-05"),  # first 00:30 to second 00:10: 40 min
             (4, "2025-03-09 01:00-04", "2025-03-10 00:00-04"))  # the whole 23-hour day
    rows = query(db, "SELECT operator_id, day, sessions, online_seconds FROM operator_daily ORDER BY 1, 2")
    d = dt.date
    assert rows == [(1, d(2024, 11, 2), 1, 1800.0), (1, d(2024, 11, 3), 0, 5400.0),
                    (2, d(2024, 11, 3), 1, 90000.0), (3, d(2024, 11, 3), 1, 2400.0),
                    (4, d(2025, 3, 9), 1, 82800.0)]


def test_conversation_daily_on_the_23_and_25_hour_days(paris):
    conversations(paris,
                  (1, 1, "2025-10-26 00:30+02", "2025-10-26 02:10+01"),  # 22:30-01:10 UTC: 2 h 40 = 9600 s
                  (2, 1, "2025-10-26 23:30+01", "2025-10-27 00:10+01"),  # 2400 s, still the 26th
                  (3, 1, "2025-10-27 00:30+01", None),                   # 23:30 UTC on the 26th: the 27th
                  (4, 1, "2025-03-29 23:59+01", "2025-03-30 03:01+02"),  # 22:59-01:01 UTC: 7320 s
                  (5, 1, "2025-03-30 00:30+01", "2025-03-30 03:30+02"),  # 23:30-01:30 UTC: 7200 s
                  (6, 1, "2025-03-31 00:30+02", "2025-03-31 00:40+02"))  # 22:30 UTC on the 30th: the 31st
    rows = query(paris, "SELECT day, conversations, ended, avg_duration_seconds FROM conversation_daily ORDER BY day")
    d = dt.date
    assert rows == [(d(2025, 3, 29), 1, 1, 7320.0), (d(2025, 3, 30), 1, 1, 7200.0), (d(2025, 3, 31), 1, 1, 600.0),
                    (d(2025, 10, 26), 2, 2, 6000.0), (d(2025, 10, 27), 1, 0, None)]


# --- conversation_concurrency -----------------------------------------------------------------

def test_concurrency_in_the_repeated_autumn_hour(paris):
    conversations(paris,
                  (1, 1, "2025-10-26 02:50+02", "2025-10-26 02:10+01"),  # 00:50-01:10 UTC: 20 minutes
                  (2, 2, "2025-10-26 02:05+02", "2025-10-26 02:07+01"),  # open over both 02:05 and 02:06
                  (3, 3, "2025-10-26 02:58+02", "2025-10-26 02:01+01"),  # 00:58-01:01 UTC
                  (4, 3, "2025-10-26 02:59+01", "2025-10-26 03:01+01"),  # 01:59-02:01 UTC, never beside 3
                  (5, 4, "2025-10-26 02:50+02", "2025-10-26 02:00+01"),  # ends on the change
                  (6, 5, "2025-10-26 02:30+01", "2025-10-26 02:30+01"))  # zero length, second 02:30
    assert concurrency(paris, 1) == dict.fromkeys(minutes("10-26", 2, 0, 9) + minutes("10-26", 2, 50, 59), 1)
    # Each local minute of 02h happened twice: the larger of its two counts, not their sum.
    assert concurrency(paris, 2) == dict.fromkeys(minutes("10-26", 2, 0, 59), 1)
    assert concurrency(paris, 3) == {"10-26 02:58": 1, "10-26 02:59": 1, "10-26 02:00": 1, "10-26 03:00": 1}
    assert concurrency(paris, 4) == dict.fromkeys(minutes("10-26", 2, 50, 59), 1)
    assert concurrency(paris, 5) == {"10-26 02:30": 1}


def test_concurrency_peak_in_the_repeated_hour(paris):
    conversations(paris,
                  (1, 1, "2025-10-26 02:20+02", "2025-10-26 02:40+02"),  # first 02h
                  (2, 1, "2025-10-26 02:30+02", "2025-10-26 02:35+02"),  # first 02h, beside 1
                  (3, 1, "2025-10-26 02:30+01", "2025-10-26 02:31+01"))  # second 02h, alone
    rows = concurrency(paris, 1)
    assert rows["10-26 02:30"] == 2 and rows["10-26 02:34"] == 2 and rows["10-26 02:35"] == 1
    assert rows["10-26 02:20"] == 1 and len(rows) == 20


def test_concurrency_skips_the_missing_spring_hour(paris):
    conversations(paris, (1, 1, "2025-03-30 01:58+01", "2025-03-30 03:01+02"))  # 00:58-01:01 UTC: 3 minutes
    assert concurrency(paris, 1) == {"03-30 01:58": 1, "03-30 01:59": 1, "03-30 03:00": 1}


def test_views_still_grant_analyst(paris):
    with paris.cursor() as cur:
        cur.execute("SET ROLE analyst")
        try:
            for view in ("operator_presence", "conversation_concurrency", "operator_daily", "conversation_daily"):
                cur.execute(f"SELECT count(*) FROM {view}")
        finally:
            cur.execute("RESET ROLE")


# --- the rule for local times with two readings, in Python -----------------------------------

def test_parse_push_datetime_reads_an_ambiguous_time_as_its_second_occurrence():
    with push_timezone("Europe/Paris"):
        autumn = parse_push_datetime("2025-10-26 02:30:00")
        spring = parse_push_datetime("2025-03-30 02:30:00")
        before = parse_push_datetime("2025-10-26 01:59:59")
        after = parse_push_datetime("2025-10-26 03:00:00")
        first_0250 = dt.datetime(2025, 10, 26, 2, 50, tzinfo=PARIS)  # fold=0: 00:50 UTC
    assert autumn == utc("2025-10-26 01:30:00")  # CET, the smaller offset
    assert spring == utc("2025-03-30 01:30:00")  # CET, the offset before the change
    assert before == utc("2025-10-25 23:59:59") and after == utc("2025-10-26 02:00:00")
    assert (autumn.hour, autumn.minute) == (2, 30)  # the wall clock is kept
    # It must order by instant against other times of the zone, e.g. when min() picks a conversation's start.
    assert autumn > first_0250 and min(autumn, first_0250) is first_0250
    assert sorted([autumn, after, first_0250]) == [first_0250, autumn, after]


def test_localize_follows_the_rule_and_keeps_utc_cheap():
    assert localize(dt.datetime(2025, 10, 26, 2, 30), PARIS) == utc("2025-10-26 01:30:00")
    assert localize(dt.datetime(2025, 3, 30, 2, 30), PARIS) == utc("2025-03-30 01:30:00")
    assert localize(dt.datetime(2025, 7, 1, 12, 0, 0, 5), PARIS) == utc("2025-07-01 10:00:00.000005")
    new_york = ZoneInfo("America/New_York")  # 2025-11-02 01:30 happens twice (EDT, then EST)
    assert localize(dt.datetime(2025, 11, 2, 1, 30), new_york) == utc("2025-11-02 06:30:00")
    assert localize(dt.datetime(2025, 3, 9, 2, 30), new_york) == utc("2025-03-09 07:30:00")  # EST, nonexistent
    for zone in (UTC, ZoneInfo("UTC")):
        assert localize(dt.datetime(2025, 10, 26, 2, 30), zone).tzinfo is zone


def test_worker_stores_ambiguous_times_as_postgresql_reads_them(settings, paris, rq):
    """A login at 02:30 on the autumn day is the second 02:30, as in SQL: 40 minutes to 03:10, not 100."""
    tz_settings = make_settings(settings.database_url, settings.redis_url, PUSH_TIMEZONE="Europe/Paris")
    loop = Consumer(tz_settings, registry_with_handlers(), name="dst")
    enqueue(loop.queue, login(1, "2025-10-26 02:30:00"), logout(1, "2025-10-26 03:10:00"))
    drain(loop)
    loop.close()
    assert query(paris, "SELECT login_at, logout_at, duration_seconds FROM operator_sessions") == [
        (utc("2025-10-26 01:30:00"), utc("2025-10-26 02:10:00"), 2400.0)]
    assert query(paris, "SELECT login_at = '2025-10-26 02:30:00'::timestamp AT TIME ZONE 'Europe/Paris'"
                        " FROM operator_sessions") == [(True,)]
    assert presence(paris, 1) == [("10-26 02:00", 1800.0), ("10-26 03:00", 600.0)]


# --- the same rule in Python and PostgreSQL, on random times around transitions ---------------

# Zones with 1-hour, 30-minute (Lord Howe), 45-minute-offset (Chatham) changes, southern
# hemisphere ones, a zone that abolished DST (Sao Paulo, until 2019) and one with
# only historical changes (Kolkata, LMT to 1945), each with years where it changes.
ZONES = {
    "Europe/Paris": [(1890, 2100), (1911, 1950)],  # LMT and Paris Mean Time (+00:09:21), the wars
    "America/New_York": [(1880, 2100)],
    "Australia/Lord_Howe": [(1890, 2100)],
    "America/Sao_Paulo": [(1910, 2019)],
    "Asia/Kolkata": [(1850, 1946), (1941, 1945)],
    "Pacific/Chatham": [(1950, 2100)],
}


@functools.lru_cache(maxsize=4096)
def transitions(zone: str, year: int) -> tuple[tuple[dt.datetime, dt.timedelta, dt.timedelta], ...]:
    """(UTC instant as naive, offset before, offset after) of each change of `zone` in `year`.

    Found from zoneinfo's UTC-to-local conversion (not from localize): offsets
    sampled every 3 hours, each change narrowed down to the second.
    """
    tz = ZoneInfo(zone)

    def offset(t: dt.datetime) -> dt.timedelta:
        return t.replace(tzinfo=UTC).astimezone(tz).utcoffset()

    # A day's margin at both ends of the calendar, where local times overflow datetime.
    start = dt.datetime(year, 1, 1) + (dt.timedelta(days=1) if year == 1 else dt.timedelta(0))
    end = dt.datetime(year, 12, 31) if year == 9999 else dt.datetime(year + 1, 1, 1)
    found, step = [], dt.timedelta(hours=3)
    t, before = start, offset(start)
    while t < end:
        nxt = min(t + step, end)
        after = offset(nxt)
        if after != before:
            lo, hi = t, nxt  # offset(lo) == before, offset(hi) == after
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                lo, hi = (mid, hi) if offset(mid) == before else (lo, mid)
            found.append((hi, before, after))
        t, before = nxt, after
    return tuple(found)


@st.composite
def local_times(draw) -> tuple[str, dt.datetime]:
    """A zone and a naive local time, mostly in or near the window a change makes ambiguous or nonexistent."""
    zone = draw(st.sampled_from(sorted(ZONES)))
    low, high = draw(st.sampled_from(ZONES[zone]))
    year = draw(st.integers(1, 9999)) if draw(st.integers(0, 3)) == 0 else draw(st.integers(low, high))
    changes = transitions(zone, year)
    if not changes or draw(st.integers(0, 9)) == 0:
        start = dt.datetime(year, 1, 2) if year == 1 else dt.datetime(year, 1, 1)
        return zone, start + dt.timedelta(seconds=draw(st.integers(0, 362 * 86400)))
    at, before, after = draw(st.sampled_from(changes))
    window = abs(after - before)
    local_start = at + min(before, after)  # first local time of the window with two or no readings
    edges = [dt.timedelta(0), window, window - dt.timedelta(seconds=1), -dt.timedelta(seconds=1)]
    width = int(window.total_seconds())
    delta = draw(st.one_of(st.sampled_from(edges),
                           st.integers(0, width - 1).map(lambda s: dt.timedelta(seconds=s)),
                           st.integers(-width - 7200, 2 * width + 7200).map(lambda s: dt.timedelta(seconds=s))))
    return zone, local_start + delta


@pytest.fixture(scope="module")
def pg(settings):
    conn = psycopg2.connect(settings.database_url)
    conn.autocommit = True
    yield conn
    conn.close()


def postgres_offsets(conn, values: list[tuple[str, dt.datetime]]) -> list[float]:
    """The UTC offset (seconds) PostgreSQL's `timestamp AT TIME ZONE` uses for each local time, in one query.

    Offsets rather than instants: near year 1 the instant may fall in 1 BC, which Python cannot hold."""
    rows = query(conn, """SELECT (extract(epoch FROM l::timestamp) - extract(epoch FROM l::timestamp AT TIME ZONE z))
                                 ::double precision
                          FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS u(z, l, i) ORDER BY i""",
                 [z for z, _ in values], [n.isoformat(sep=" ") for _, n in values])
    return [seconds for seconds, in rows]


@hsettings(max_examples=examples(100), deadline=None)
@given(values=st.lists(local_times(), min_size=1, max_size=40))
def test_localize_agrees_with_postgresql(pg, values):
    ours = []
    for zone, naive in values:
        aware = localize(naive, ZoneInfo(zone))
        assert aware.replace(tzinfo=None) == naive  # the wall clock is kept
        ours.append(aware.utcoffset().total_seconds())
    theirs = postgres_offsets(pg, values)
    assert [(z, n.isoformat(sep=" "), o) for (z, n), o in zip(values, ours, strict=True)] == \
           [(z, n.isoformat(sep=" "), o) for (z, n), o in zip(values, theirs, strict=True)]
