"""The webhook tables are a function of the SET of distinct webhooks (CONTRACT 7).

Hostile but valid streams of the six handled types and some unhandled ones:
few conversations and users, so that events collide; a small pool of times
around a daylight-saving change or a month's end of a year anywhere from 2 to
9998, so that `createdAt` ties (then `eventId` orders) and sessions, periods
and conversations cross local midnights; `createdAt` written with `Z`, with
offsets, with the zone's own offset or without one (read in PUSH_TIMEZONE);
transfers; ends before starts; availabilities listing a channel twice;
satisfaction answers of one field each and customQuestion-only ones; retries
(the same `eventId` with another `sentAt`) delivered in later batches.
The tables must equal tests.oracle_webhooks, whatever the order and the
batching, and every webhook must be one `events` row counting its receipts.
`make test` runs a bounded number of examples; `--thorough` runs 20x more.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests import http_client as http
from tests import oracle
from tests import oracle_webhooks as ow
from tests.conftest import RUN_ID, TOKEN, examples, make_settings, query, start_web, start_worker, wait_for
from tests.helpers import drain, enqueue
from tests.test_properties import event_sets
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers

UTC = dt.UTC
# Paris (1-hour changes at 02:00/03:00 local, LMT +00:09:21 before 1891), Havana (changes at
# midnight: midnight happens twice in autumn), Sao Paulo (midnight skipped in spring, until 2019).
ZONES = ("Europe/Paris", "Europe/Paris", "America/Havana", "America/Sao_Paulo", "UTC")
# "1" is also a Push API conversation id (an integer there): the tables must not mix.
CONVERSATIONS = ("a3b1c9d0-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "0f5e8d2c-1b3a-4c6d-9e8f-7a6b5c4d3e2f", "1")
USERS = (4411, 7, 2**53 + 3)
OPERATORS = (*USERS, 90210)
PROJECTS = (12, 2**40)
CHANNELS = ("CHAT", "CALL", "VIDEO", "SMS", "FACEBOOK_BUSINESS_ON_MESSENGER", "WHATSAPP")
DESK_CHANNELS = ("CHAT", "CALL", "VIDEO", "THIRD_PARTY", "APPLE_MESSAGES")
STATUSES = ("AVAILABLE", "UNAVAILABLE")
UNHANDLED = ("visitor.updated", "user.created", "user.updated", "transaction.attributed", "conversation.started",
             "conversation.closed", "conversation.transferred", "satisfaction.filled", "v3.conversation.pushed")
OFFSETS = tuple(dt.timezone(dt.timedelta(minutes=m)) for m in (0, 120, -330, 345, 840, -720))
HYPOTHESIS = {"deadline": None, "derandomize": True, "database": None,
              "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large]}


# --- bodies as iAdvize sends them --------------------------------------------------------------

def iso(at: dt.datetime) -> str:
    """ISO 8601 as iAdvize writes it: milliseconds when there are any (microseconds when
    finer); `Z` for UTC."""
    text = at.isoformat(timespec="microseconds" if at.microsecond % 1000 else
                        "milliseconds" if at.microsecond else "seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") and at.tzinfo is UTC else text


def webhook(event_type: str, event_id: str, created: str, sent: str | None = None, **fields) -> dict:
    return {"eventId": event_id, "eventType": event_type, "platform": "ha", "clientId": 340, "createdAt": created,
            "sentAt": sent or created, **fields}


def pushed(event_id: str, cid: str, created: str, operator: int, project: int = 12, channel: str = "CHAT",
           visitor: str = "c0ffee00-1234-4cde-8f00-aa11bb22cc33", **extra) -> dict:
    return webhook("v2.conversation.pushed", event_id, created, conversationId=cid, operatorId=operator,
                   projectId=project, channel=channel, visitorId=visitor, **extra)


def closed(event_id: str, cid: str, created: str, operators: list[int], project: int = 12, channel: str = "CHAT",
           visitor: str = "c0ffee00-1234-4cde-8f00-aa11bb22cc33", **extra) -> dict:
    return webhook("v2.conversation.closed", event_id, created, conversationId=cid, operatorIds=operators,
                   projectId=project, channel=channel, visitorId=visitor, **extra)


def connection(event_id: str, user: int, created: str, connected: bool = True, **extra) -> dict:
    return webhook("user.connected" if connected else "user.disconnected", event_id, created, userId=user, **extra)


def availability(event_id: str, user: int, created: str, entries: list[tuple[str, str]], **extra) -> dict:
    return webhook("user.availability.updated", event_id, created, userId=user, origin="desk",
                   availabilities=[{"channel": c, "status": s} for c, s in entries], **extra)


def answer(event_id: str, cid: str, created: str, project: int = 12, **field) -> dict:
    return webhook("satisfaction.answered", event_id, created, conversationId=cid, projectId=project, **field)


def retry(body: dict, k: int) -> dict:
    """Another delivery of the same event: only `sentAt` differs. (Without a string
    `eventId` an event is its content: its copies are then identical.)"""
    if not isinstance(body.get("eventId"), str):
        return body
    try:
        sent = dt.datetime.fromisoformat(body["createdAt"].replace("Z", "+00:00"))
    except ValueError:
        sent = dt.datetime(2025, 1, 1)
    return {**body, "sentAt": (sent + dt.timedelta(seconds=1 + 7 * k)).isoformat(timespec="milliseconds")}


def broken_base(event_type: str, event_id: str, cid: str, user: int, created: str) -> dict:
    """A valid body of a handled type, to be broken by one of BREAKAGES."""
    if event_type == "v2.conversation.pushed":
        return pushed(event_id, cid, created, user)
    if event_type == "v2.conversation.closed":
        return closed(event_id, cid, created, [user])
    if event_type == "user.availability.updated":
        return availability(event_id, user, created, [("CHAT", "AVAILABLE")])
    if event_type == "satisfaction.answered":
        return answer(event_id, cid, created, netPromoterScore=0)
    return connection(event_id, user, created, connected=event_type == "user.connected")


# A valid body of each handled type made invalid: (type, field, value); `...` removes the field.
BREAKAGES = (
    ("v2.conversation.pushed", "conversationId", ...), ("v2.conversation.pushed", "operatorId", ...),
    ("v2.conversation.pushed", "operatorId", "4411"), ("v2.conversation.pushed", "projectId", None),
    ("v2.conversation.closed", "operatorIds", "7,4411"), ("v2.conversation.closed", "operatorIds", [7, "x"]),
    ("v2.conversation.closed", "conversationId", 31337),
    ("user.connected", "userId", "7"), ("user.disconnected", "userId", ...), ("user.connected", "userId", True),
    ("user.availability.updated", "availabilities", {"channel": "CHAT", "status": "AVAILABLE"}),
    ("user.availability.updated", "availabilities", [{"channel": "CHAT"}]),
    ("satisfaction.answered", "netPromoterScore", 11), ("satisfaction.answered", "customerSatisfaction", "5"),
    ("satisfaction.answered", "conversationId", ...),
    ("user.connected", "createdAt", "2025-02-30T10:00:00Z"), ("v2.conversation.pushed", "createdAt", "yesterday"),
    ("user.disconnected", "eventId", ...), ("v2.conversation.pushed", "eventId", 12345),
)


# --- times --------------------------------------------------------------------------------------

def transitions(tz: str, year: int) -> list[dt.datetime]:
    """The instants (to the second) at which `tz` changes its offset during `year`."""
    zone = ZoneInfo(tz)

    def offset(at: dt.datetime) -> dt.timedelta:
        return at.astimezone(zone).utcoffset()

    found = []
    day = dt.datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        nxt = day + dt.timedelta(days=1)
        if offset(day) != offset(nxt):
            lo, hi = day, nxt
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                lo, hi = (mid, hi) if offset(mid) == offset(day) else (lo, mid)
            found.append(hi)
        day = nxt
    return found


@st.composite
def anchors(draw, tz: str, on_changes: bool = False) -> dt.datetime:
    """An instant to cluster a stream's times around: a change of offset, a local
    month's end (the year's end too), or any local noon, in a year from 2 to 9998."""
    if on_changes:
        year = draw(st.one_of(st.integers(1980, 2100), st.sampled_from([2025, 9998])))
        kind = "change"
    else:
        year = draw(st.one_of(st.sampled_from([2025, 2024, 2016, 1996, 1940, 1911, 1890, 2038, 2100, 9998, 2]),
                              st.integers(1970, 2100), st.integers(2, 9998)))
        kind = draw(st.sampled_from(["change", "change", "change", "month end", "noon"]))
    zone = ZoneInfo(tz)
    if kind == "change" and (changes := transitions(tz, year)):
        return draw(st.sampled_from(changes))
    month = draw(st.integers(1, 12))
    if kind != "noon":
        first = dt.date(year + month // 12, month % 12 + 1, 1)  # the day after the month's end
        return ow.day_start(first, zone)
    day = dt.date(year, month, draw(st.integers(1, 28)))
    return dt.datetime.combine(day, dt.time(12)).replace(tzinfo=zone).astimezone(UTC)


@st.composite
def written(draw, at: dt.datetime, tz: str) -> str:
    """`at` as a `createdAt` text: with Z, the zone's own offset (seconds too, for LMT), another
    offset, or no offset (local time in PUSH_TIMEZONE, maybe one that happens twice)."""
    how = draw(st.sampled_from(["Z", "zone", "offset", "naive", "naive"]))
    spec = "microseconds" if at.microsecond % 1000 else "milliseconds" if at.microsecond else "seconds"
    if how == "Z":
        return iso(at)
    if how == "zone":
        return at.astimezone(ZoneInfo(tz)).isoformat(timespec=spec)
    if how == "offset":
        return at.astimezone(draw(st.sampled_from(OFFSETS))).isoformat(timespec=spec)
    return at.astimezone(ZoneInfo(tz)).replace(tzinfo=None).isoformat(timespec=spec)


# --- streams --------------------------------------------------------------------------------------

@st.composite
def webhook_streams(draw, zones=ZONES, max_events: int = 30, on_changes: bool = False):
    """(zone, distinct events, deliveries): the deliveries are every event 1-3 times,
    shuffled, retries differing in `sentAt` only. `on_changes`: around a change of
    offset in Paris or Havana, always with times in the hour that may happen twice."""
    tz = draw(st.sampled_from(("Europe/Paris", "America/Havana") if on_changes else zones))
    anchor = draw(anchors(tz, on_changes))
    # Few distinct times: ties between events of one conversation, user or channel.
    # Most within 90 minutes of the anchor (in the hour that happens twice, around midnight).
    minutes = draw(st.lists(st.one_of(st.integers(-90, 90), st.integers(-90, 90), st.integers(-36 * 60, 36 * 60)),
                            min_size=1, max_size=6, unique=True))
    if on_changes or draw(st.booleans()):
        # Half an hour either side of the anchor: when it is a change back, both read the same
        # on the wall clock (a local time that happens twice; at midnight in Havana, whose
        # first midnight is an hour before the change).
        minutes = sorted({*minutes, -70, -30, 30})
    pool = [anchor + dt.timedelta(minutes=m, microseconds=draw(st.sampled_from([0, 0, 171000, 999000, 1])))
            for m in minutes]
    n = draw(st.integers(1, max_events))
    ids = [str(u) for u in draw(st.lists(st.uuids(version=4), min_size=n, max_size=n, unique=True))]
    events = []
    for i, event_id in enumerate(ids):
        if draw(st.integers(0, 14)) == 0:
            event_id = f"evt-{i:05d}"  # not a UUID: any string eventId is an identity
        created = draw(written(draw(st.sampled_from(pool)), tz))
        extra = draw(st.sampled_from([{}, {}, {"platform": "SD"}, {"visitorExternalId": None},
                                      {"visitorExternalId": "70431123", "someday": {"new": [1, 2.5, None]}}]))
        kind = draw(st.sampled_from(["pushed", "pushed", "closed", "connected", "disconnected", "connected",
                                     "flip", "availability", "availability", "satisfaction", "unhandled",
                                     "invalid"]))
        cid = draw(st.sampled_from(CONVERSATIONS))
        user = draw(st.sampled_from(USERS))
        if kind in ("pushed", "closed"):
            common = {"project": draw(st.sampled_from(PROJECTS)), "channel": draw(st.sampled_from(CHANNELS)),
                      "visitor": draw(st.sampled_from(["v-1", "v-2"])), **extra}
            if kind == "pushed":
                events.append(pushed(event_id, cid, created, draw(st.sampled_from(OPERATORS)), **common))
            else:
                events.append(closed(event_id, cid, created,
                                     draw(st.lists(st.sampled_from(OPERATORS), max_size=3)), **common))
        elif kind in ("connected", "disconnected"):
            events.append(connection(event_id, user, created, connected=kind == "connected", **extra))
        elif kind == "flip":
            # A disconnect and a connect of one user at the same instant, maybe written differently.
            at = dt.datetime.fromisoformat(created)
            again = draw(written(at.astimezone(UTC), tz)) if at.tzinfo else created
            events.append(connection(event_id, user, created, connected=False, **extra))
            events.append(connection(str(uuid.uuid5(uuid.NAMESPACE_URL, event_id)), user, again))
        elif kind == "availability":
            channels = DESK_CHANNELS[:2] if draw(st.booleans()) else DESK_CHANNELS  # fewer: more repeats
            entries = draw(st.lists(st.tuples(st.sampled_from(channels), st.sampled_from(STATUSES)), max_size=4))
            events.append(availability(event_id, user, created, entries, **extra))
        elif kind == "satisfaction":
            field = draw(st.sampled_from(["customerSatisfaction", "netPromoterScore", "satisfactionComment",
                                          "customQuestion"]))
            value = {"customerSatisfaction": st.integers(1, 5), "netPromoterScore": st.integers(0, 10),
                     "satisfactionComment": st.text(st.characters(exclude_categories=("Cs",),
                                                                  exclude_characters="\x00"), max_size=12),
                     "customQuestion": st.booleans()}[field]
            events.append(answer(event_id, cid, created, project=draw(st.sampled_from(PROJECTS)),
                                 **{field: draw(value)}))
        elif kind == "invalid":
            # Rejected, naming the field: it must change no table.
            event_type, field, value = draw(st.sampled_from(BREAKAGES))
            body = broken_base(event_type, event_id, cid, user, created)
            if value is ...:
                del body[field]
            else:
                body[field] = value
            events.append(body)
        else:
            event_type = draw(st.sampled_from(UNHANDLED))
            # Ids that collide with the handled ones: an unhandled event must change no table.
            events.append(webhook(event_type, event_id, created, conversationId=cid if event_type[0] != "c" else 9,
                                  userId=user, operatorIds=[user], channel="chat"))
    deliveries = []
    for event in events:
        deliveries += [retry(event, k) if k else event for k in range(draw(st.integers(1, 3)))]
    random.Random(draw(st.integers(0, 2**32))).shuffle(deliveries)
    return tz, events, deliveries


# --- the database ---------------------------------------------------------------------------------

def truncate_all(db) -> None:
    """Empty every table the migrations made (whatever the webhook handlers keep besides the
    contract's tables), but the configuration and the migration tool's own."""
    names = [r[0] for r in query(db, """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> 'pushline_config' AND c.relname !~ 'yoyo'""")]
    with db.cursor() as cur:
        cur.execute("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY")


@pytest.fixture
def views_zone(db):
    """Sets the views' zone (pushline_config, shared by the suite) and puts the old one back;
    leaves no webhook rows behind (the db fixture empties only the Push API tables)."""
    (before,), = query(db, "SELECT timezone FROM pushline_config")

    def set_zone(name: str) -> None:
        with db.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = %s", (name,))

    yield set_zone
    set_zone(before)
    truncate_all(db)


def identity(body: dict) -> str:
    """An event's identity: its `eventId`, or without a string one its whole content."""
    event_id = body.get("eventId")
    return event_id if isinstance(event_id, str) else json.dumps(body, sort_keys=True)


def check_events(db, deliveries: list[dict], tz: str) -> None:
    """Every webhook is one `events` row counting its receipts, with its final status (rejected
    ones with an error naming the field as iAdvize spells it)."""
    receipts: dict[str, int] = {}
    firsts: dict[str, dict] = {}
    for body in deliveries:
        receipts[identity(body)] = receipts.get(identity(body), 0) + 1
        firsts.setdefault(identity(body), body)
    rows = query(db, "SELECT payload, name, status, error, deliveries, created_at FROM events"
                     " WHERE payload ? 'eventType'")
    seen: dict[str, int] = {}
    for payload, name, status, error, count, created in rows:
        key = identity(payload)
        seen[key] = seen.get(key, 0) + 1
        body = firsts.get(key)
        assert body is not None, f"an events row for a webhook never sent: {payload}"
        bad = ow.invalid_field(body)
        want = "unhandled" if body["eventType"] not in ow.HANDLED else "rejected" if bad else "processed"
        assert (name, status, count) == (body["eventType"], want, receipts[key]), (body, status, error, count)
        if bad:
            assert bad in (error or ""), (body, error)
        else:
            assert created in ow.readings(body["createdAt"], tz), (body["createdAt"], created)
    assert seen == dict.fromkeys(receipts, 1), {k: seen.get(k, 0) for k in receipts if seen.get(k) != 1}


def assert_equals_oracle(db, deliveries: list[dict], tz: str, want=None) -> dict:
    actual = ow.read_webhook_tables(db)
    problem = ow.mismatch(actual, want if want is not None else ow.expected(deliveries, tz))
    assert problem is None, problem
    return actual


# --- (a) in process --------------------------------------------------------------------------------

@pytest.fixture
def consumers(settings, rq):
    """A drain loop per PUSH_TIMEZONE, made on first use."""
    made: dict[str, Consumer] = {}

    def loop(tz: str) -> Consumer:
        if tz not in made:
            made[tz] = Consumer(make_settings(settings.database_url, settings.redis_url, PUSH_TIMEZONE=tz),
                                registry_with_handlers(), name=f"wh-{len(made)}")
        return made[tz]

    yield loop
    for consumer in made.values():
        consumer.close()


def feed(loop: Consumer, deliveries: list[dict], seed: int) -> None:
    """Enqueue in random cuts, draining the queue after each; the cuts come through either
    token (iAdvize ids are platform-wide: the source changes no identity and no table)."""
    rng = random.Random(seed)
    i = 0
    while i < len(deliveries):
        step = rng.randint(1, 8)
        enqueue(loop.queue, *deliveries[i:i + step], source=rng.choice(["default", "paris"]))
        drain(loop)
        i += step


@hsettings(max_examples=examples(25), **HYPOTHESIS)
@given(case=webhook_streams())
def test_webhook_tables_are_a_function_of_the_set_of_events(db, views_zone, consumers, case):
    """The real drain loop, random batch cuts: the tables equal the oracle. Then the
    same events, first copies in another order and every retry in later batches
    after all of them, give the very same tables."""
    check_any_order_and_batching(db, views_zone, consumers, case)


@hsettings(max_examples=examples(15), **HYPOTHESIS)
@given(case=webhook_streams(on_changes=True))
def test_webhook_tables_around_changes_of_offset(db, views_zone, consumers, case):
    """The same, every stream around a change of offset: local times that happen twice
    or never, 23- and 25-hour days, a midnight that happens twice (Havana)."""
    check_any_order_and_batching(db, views_zone, consumers, case)


def check_any_order_and_batching(db, views_zone, consumers, case) -> None:
    tz, events, deliveries = case
    views_zone(tz)
    loop = consumers(tz)
    want = ow.expected(deliveries, tz)
    firsts = ow.distinct(deliveries)
    retries = [b for b in deliveries if not any(b is f for f in firsts)]
    runs = []
    for seed, stream in ((1, deliveries), (2, firsts[::-1] + retries[::-1])):
        truncate_all(db)
        feed(loop, stream, seed)
        runs.append(assert_equals_oracle(db, stream, tz, want))
        check_events(db, stream, tz)
    assert ow.same_tables(*runs), ow.differences(runs[1], runs[0])


def test_retries_in_later_drains_and_an_unhandled_type_change_nothing(db, views_zone, consumers):
    """A hand-written stream: a transfer, a close before the push, a session across the
    autumn change in Paris, an availability listing a channel twice; then every event
    again (retries) in a later drain, and an unhandled event on the same ids."""
    tz = "Europe/Paris"
    views_zone(tz)
    truncate_all(db)
    loop = consumers(tz)
    cid = CONVERSATIONS[0]
    bodies = [
        closed(str(uuid.UUID(int=1)), cid, "2025-10-26T00:10:00.000Z", [7, 4411]),
        pushed(str(uuid.UUID(int=2)), cid, "2025-10-26T00:20:00.000Z", 4411, channel="SMS"),
        pushed(str(uuid.UUID(int=3)), cid, "2025-10-26T02:20:00+01:00", 7),  # 01:20Z, the second 02:20
        connection(str(uuid.UUID(int=4)), 7, "2025-10-25T23:30:00+02:00"),
        connection(str(uuid.UUID(int=5)), 7, "2025-10-26T23:30:00+01:00", connected=False),
        availability(str(uuid.UUID(int=6)), 7, "2025-10-26T09:00:00+01:00",
                     [("CHAT", "UNAVAILABLE"), ("CHAT", "AVAILABLE")]),
        availability(str(uuid.UUID(int=7)), 7, "2025-10-26T10:00:00+01:00", [("CHAT", "UNAVAILABLE")]),
        answer(str(uuid.UUID(int=8)), cid, "2025-10-26T10:00:00Z", netPromoterScore=9),
        answer(str(uuid.UUID(int=9)), cid, "2025-10-26T10:00:01Z", customQuestion=True),
    ]
    unhandled = webhook("user.updated", str(uuid.UUID(int=10)), "2025-10-26T12:00:00Z", userId=7)
    feed(loop, bodies, 3)
    feed(loop, [retry(b, 1) for b in bodies] + [unhandled], 4)
    everything = bodies + [retry(b, 1) for b in bodies] + [unhandled]
    actual = assert_equals_oracle(db, everything, tz)
    check_events(db, everything, tz)
    row = actual["conversations_v2"][cid]
    assert (row["operator_id"], row["last_operator_id"], row["assignments"], row["channel"]) == (4411, 7, 2, "SMS")
    assert row["duration_seconds"] == -600.0  # closed 10 minutes before it was first pushed
    assert actual["user_sessions"] == [(7, dt.datetime(2025, 10, 25, 21, 30, tzinfo=UTC),
                                        dt.datetime(2025, 10, 26, 22, 30, tzinfo=UTC), 25 * 3600.0)]
    # The session starts on the 25th (local): it counts there, its seconds split at local midnight.
    assert actual["user_daily"][(7, dt.date(2025, 10, 25))] == {
        "sessions": 1, "connected_seconds": 1800.0, "assignments": 0, "available_seconds": 0}
    assert actual["user_daily"][(7, dt.date(2025, 10, 26))] == {
        "sessions": 0, "connected_seconds": 24 * 3600.0 + 1800, "assignments": 1, "available_seconds": 3600.0}


# --- (b) through the web tier and a worker process, mixed with the Push API ---------------------------

@pytest.fixture(scope="module")
def paris_pipeline(database_url, redis_url, tmp_path_factory):
    settings = make_settings(database_url, redis_url, PUSHLINE_QUEUE_PREFIX=f"pushline-whprop-{RUN_ID}",
                             PUSH_TIMEZONE="Europe/Paris", PUSHLINE_BATCH_SIZE="5")
    logs = tmp_path_factory.mktemp("whprop")
    web, base = start_web(settings, logs)
    worker = start_worker(settings, logs, name="wh", PUSHLINE_BATCH_SIZE="5")
    yield base
    web.stop()
    worker.stop()
    assert "deadlock" not in worker.output().lower()


@st.composite
def mixed_streams(draw):
    push_api = draw(event_sets(max_events=20))
    _, _, webhooks = draw(webhook_streams(zones=("Europe/Paris",), max_events=40))
    bodies = push_api + webhooks
    random.Random(draw(st.integers(0, 2**32))).shuffle(bodies)
    return bodies


@pytest.mark.slow
@hsettings(max_examples=examples(15), **HYPOTHESIS)
@given(bodies=mixed_streams())
def test_through_web_redis_and_a_worker_both_formats_equal_their_oracles(paris_pipeline, db, views_zone, bodies):
    tz = "Europe/Paris"
    views_zone(tz)
    truncate_all(db)
    for body in bodies:
        resp = http.post_json(f"{paris_pipeline}/push/{TOKEN}", json.dumps(body).encode())
        assert resp.status == 202, resp.body
    wait_for(lambda: query(db, "SELECT coalesce(sum(deliveries), 0) FROM events")[0][0] == len(bodies),
             timeout=30, what="every push to be stored")
    push_api = [b for b in bodies if "name" in b]
    webhooks = [b for b in bodies if "eventType" in b]
    convs, sessions = oracle.read_tables(db)
    assert convs == oracle.conversations(push_api, tz)
    assert sessions == oracle.operator_sessions(push_api, tz)
    assert_equals_oracle(db, webhooks, tz)
    check_events(db, webhooks, tz)
