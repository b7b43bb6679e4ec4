"""Eight worker processes on the same three operators and three conversations."""

from __future__ import annotations

import random

import pytest
import redis

from pushline.queue import EventQueue
from pushline.workerstats import WorkerStats
from tests import oracle
from tests.conftest import RUN_ID, make_settings, query, start_worker, wait_for
from tests.helpers import conversation, enqueue, login, logout

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
