"""Eight worker processes on the same three operators and three conversations;
then on the same three webhook conversations, users and their channels."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from zoneinfo import ZoneInfo

import pytest
import redis

from pushline.queue import EventQueue
from pushline.workerstats import WorkerStats
from tests import oracle
from tests import oracle_webhooks as ow
from tests.conftest import RUN_ID, make_settings, query, start_worker, wait_for
from tests.helpers import conversation, enqueue, login, logout
from tests.test_webhook_properties import (
    CONVERSATIONS,
    USERS,
    answer,
    availability,
    check_events,
    closed,
    connection,
    iso,
    pushed,
    retry,
    truncate_all,
    webhook,
)

pytestmark = pytest.mark.slow


def hammer_events(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    distinct = []
    while len(distinct) < n * 3 // 4:
        at = f"2014-01-01 {rng.randrange(8, 18):02d}:{rng.randrange(0, 60):02d}:{rng.choice([0, 30]):02d}"
        kind = rng.choice(["login", "logout", "start", "end"])
        key = rng.randrange(1, 4)
        if kind == "login":
            distinct.append(login(key, at))
        elif kind == "logout":
            distinct.append(logout(key, at))
        else:
            distinct.append(conversation(kind, key, at, type_="chat" if kind == "start" else "video", op=key,
                                         website=key, group=key if kind == "start" else 9))
    events = distinct + [{**e, "datetime": {**e["datetime"], "sent": "2015-01-01 00:00:00"}}
                         for e in rng.sample(distinct, n - len(distinct))]
    rng.shuffle(events)
    return events


def test_eight_workers_on_the_same_keys_equal_the_oracle_without_deadlock(database_url, redis_url, db,
                                                                          tmp_path):
    settings = make_settings(database_url, redis_url, PUSHLINE_QUEUE_PREFIX=f"pushline-hammer-{RUN_ID}")
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{settings.queue_prefix}:*"):
        client.delete(key)
    queue = EventQueue(client, settings.queue_prefix)
    stats = WorkerStats(client, settings.queue_prefix)
    bodies = hammer_events(2000)
    distinct = len(oracle.distinct(bodies))
    # Every worker is up and waiting before the first event arrives, so that the
    # first one to start cannot drain the whole queue while the others boot.
    names = [f"h{i}" for i in range(8)]
    workers = []
    try:
        for name in names:
            workers.append(start_worker(settings, tmp_path, name=name, PUSHLINE_BATCH_SIZE="25"))
        enqueue(queue, *bodies)
        wait_for(lambda: query(db, "SELECT coalesce(sum(deliveries), 0) FROM events")[0][0] == len(bodies),
                 timeout=120, interval=0.5, what="2,000 events stored")
    finally:
        for w in workers:
            w.stop()
    logs = "".join(w.output() for w in workers).lower()
    assert "deadlock" not in logs
    assert "transient failure" not in logs

    # The work was shared: each worker records its name after every batch it stores.
    nodes = {f"{name}-{RUN_ID}@test" for name in names}
    storing = {worker.decode() for worker in client.hkeys(stats.lag)}
    assert storing <= nodes, storing - nodes
    assert len(storing) >= 4, f"only {sorted(storing)} stored batches; the keys were not contended"
    # Each distinct event was counted new once, by exactly one worker, whichever it was.
    figures = stats.read()
    assert sum(figures["events"].values()) == distinct
    assert figures["counters"]["batch_items"] >= len(bodies)
    assert query(db, "SELECT status, count(*) FROM events GROUP BY status") == [("processed", distinct)]

    convs, sessions = oracle.read_tables(db)
    assert convs == oracle.conversations(bodies)
    assert sessions == oracle.operator_sessions(bodies)
    assert len(convs) == 3 and {row[0] for row in sessions} == {1, 2, 3}
    assert queue.depth() == 0 and queue.claimed() == 0


def webhook_hammer(n: int, tz: str, seed: int = 11) -> list[dict]:
    """n deliveries (a quarter of them retries) of webhooks on three conversations and three
    users, on 5-minute steps around the autumn change in `tz`: many ties in `createdAt`."""
    rng = random.Random(seed)
    anchor = dt.datetime(2025, 10, 26, 1, 0, tzinfo=dt.UTC)
    distinct = []
    while len(distinct) < n * 3 // 4:
        at = anchor + dt.timedelta(minutes=5 * rng.randrange(-150, 150))
        created = rng.choice([iso(at), at.astimezone(ZoneInfo(tz)).isoformat(), at.astimezone(
            dt.timezone(dt.timedelta(hours=-3))).isoformat()])
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        cid, user = rng.choice(CONVERSATIONS), rng.choice(USERS)
        kind = rng.choice(["pushed", "pushed", "closed", "connected", "disconnected", "availability",
                           "availability", "satisfaction", "unhandled"])
        if kind == "pushed":
            distinct.append(pushed(event_id, cid, created, rng.choice(USERS), channel=rng.choice(["CHAT", "SMS"])))
        elif kind == "closed":
            distinct.append(closed(event_id, cid, created, rng.sample(USERS, rng.randrange(0, 3))))
        elif kind in ("connected", "disconnected"):
            distinct.append(connection(event_id, user, created, connected=kind == "connected"))
        elif kind == "availability":
            distinct.append(availability(event_id, user, created,
                                         [(rng.choice(["CHAT", "CALL"]), rng.choice(["AVAILABLE", "UNAVAILABLE"]))
                                          for _ in range(rng.randrange(0, 4))]))
        elif kind == "satisfaction":
            field = rng.choice(["customerSatisfaction", "netPromoterScore", "satisfactionComment",
                                "customQuestion"])
            value = {"customerSatisfaction": rng.randrange(1, 6), "netPromoterScore": rng.randrange(0, 11),
                     "satisfactionComment": rng.choice(["", "merci", "trop long"]), "customQuestion": True}[field]
            distinct.append(answer(event_id, cid, created, **{field: value}))
        else:
            distinct.append(webhook("visitor.updated", event_id, created, conversationId=cid, userId=user))
    events = distinct + [retry(e, k) for k, e in enumerate(rng.sample(distinct, n - len(distinct)), 1)]
    rng.shuffle(events)
    return events


def test_eight_workers_on_the_same_webhook_keys_equal_the_oracle(database_url, redis_url, db, tmp_path):
    tz = "Europe/Paris"
    settings = make_settings(database_url, redis_url, PUSHLINE_QUEUE_PREFIX=f"pushline-whhammer-{RUN_ID}",
                             PUSH_TIMEZONE=tz)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{settings.queue_prefix}:*"):
        client.delete(key)
    queue = EventQueue(client, settings.queue_prefix)
    (before,), = query(db, "SELECT timezone FROM pushline_config")
    truncate_all(db)
    bodies = webhook_hammer(1200, tz)
    distinct = ow.distinct(bodies)
    names = [f"wh{i}" for i in range(8)]
    workers = []
    try:
        with db.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = %s", (tz,))
        for name in names:
            workers.append(start_worker(settings, tmp_path, name=name, PUSHLINE_BATCH_SIZE="25"))
        enqueue(queue, *bodies)
        wait_for(lambda: query(db, "SELECT coalesce(sum(deliveries), 0) FROM events")[0][0] == len(bodies),
                 timeout=120, interval=0.5, what="1,200 webhooks stored")
        for w in workers:
            w.stop()
        logs = "".join(w.output() for w in workers).lower()
        assert "deadlock" not in logs
        assert "transient failure" not in logs
        unhandled = sum(b["eventType"] == "visitor.updated" for b in distinct)
        assert sorted(query(db, "SELECT status, count(*) FROM events GROUP BY status")) == sorted(
            [("processed", len(distinct) - unhandled), ("unhandled", unhandled)])
        check_events(db, bodies, tz)
        actual = ow.read_webhook_tables(db)
        problem = ow.mismatch(actual, ow.expected(bodies, tz))
        assert problem is None, problem
        assert set(actual["conversations_v2"]) == set(CONVERSATIONS)
        assert {row[0] for row in actual["user_sessions"]} == set(USERS)
        assert queue.depth() == 0 and queue.claimed() == 0
    finally:
        for w in workers:
            w.stop()
        with db.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = %s", (before,))
        truncate_all(db)
