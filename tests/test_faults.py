"""Nothing acknowledged is lost (CONTRACT 6): real processes, real faults.

The module runs its own PostgreSQL and redis-server (so it can stop and kill
them), gunicorn and Celery workers, and kills by PID only. Each case sends
numbered events while a fault happens, then checks that every event that got
a 202 is in `events` and the tables equal the oracle of what was stored.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import redis

from pushline import devstack
from pushline.db import migrate
from tests import http_client as http
from tests import oracle
from tests.conftest import TABLES, TOKEN, free_port, make_settings, start_web, start_worker, wait_for
from tests.helpers import conversation, login, logout

pytestmark = [pytest.mark.slow, pytest.mark.fault]

REPORT: list[dict] = []
LEASE = "10"  # seconds; the default (60) brings a dead worker's batch back within ~65 s


class Stack:
    """PostgreSQL and Redis of our own, which the tests may stop and kill."""

    def __init__(self, base: Path):
        self.base = base
        self.pg_port, self.redis_port = free_port(), free_port()
        self.pg = devstack.Embedded()
        self.rd = devstack.Embedded()
        self.database_url = devstack.start_postgres(self.pg, self.pg_port, base)
        self.redis_url = self.start_redis()
        migrate(self.database_url, "UTC")

    def start_redis(self) -> str:
        return devstack.start_redis(self.rd, self.redis_port, self.base)

    def start_postgres(self) -> None:
        devstack.start_postgres(self.pg, self.pg_port, self.base)

    def kill(self, emb: devstack.Embedded, sig: int) -> None:
        child = emb.children.pop()
        child.proc.send_signal(sig)
        child.proc.wait(60)

    def stop(self) -> None:
        self.rd.stop()
        self.pg.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"))
    yield stack
    stack.stop()


def numbered(n: int, offset: int = 0) -> list[dict]:
    """Distinct events: per group of four, a login, a start, an end and a logout."""
    base = dt.datetime(2014, 1, 1, 8)
    bodies = []
    for i in range(offset, offset + n):
        at = (base + dt.timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        group, kind = divmod(i, 4)
        op = group % 7
        bodies.append([login(op, at), conversation("start", group, at, op=op),
                       conversation("end", group, at, op=op), logout(op, at)][kind])
    return bodies


class Sender(threading.Thread):
    def __init__(self, url: str, bodies: list[dict], rate: float):
        super().__init__(daemon=True)
        self.url, self.bodies, self.interval = url, bodies, 1.0 / rate
        self.status: list[int] = []

    def run(self) -> None:
        start = time.monotonic()
        for i, body in enumerate(self.bodies):
            self.status.append(http.post_json(self.url, json.dumps(body).encode()).status)
            time.sleep(max(0.0, start + (i + 1) * self.interval - time.monotonic()))
        self.finished = time.monotonic()

    def accepted(self) -> list[dict]:
        return [b for b, s in zip(self.bodies, self.status, strict=False) if s == 202]


def stored_payloads(url: str) -> list[dict]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT payload FROM events")
        return [r[0] for r in cur.fetchall()]


def identity(body: dict) -> str:
    return json.dumps([body["name"], body["datetime"]["created"], body["parameters"]], sort_keys=True)


@pytest.fixture
def case(stack, tmp_path, request):
    """Fresh tables and queue, a web tier and one worker on the stack."""
    with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    redis.Redis.from_url(stack.redis_url).flushdb()
    settings = make_settings(stack.database_url, stack.redis_url, PUSHLINE_QUEUE_PREFIX="faults")
    web, base = start_web(settings, tmp_path)
    ctx = {"settings": settings, "web": web, "url": f"{base}/push/{TOKEN}", "tmp": tmp_path,
           "workers": [start_worker(settings, tmp_path, name="f0", PUSHLINE_LEASE_SECONDS=LEASE)]}
    yield ctx
    web.stop()
    for w in ctx["workers"]:
        w.stop()


def settle(stack, sender: Sender, name: str, fault_ended: float, every_push_202: bool = False) -> None:
    """Wait for everything accepted to be stored; check it; record the figures."""
    sender.join(timeout=300)
    accepted = {identity(b) for b in sender.accepted()}
    sent = {identity(b): b for b in sender.bodies}

    def all_stored():
        return accepted <= {identity(p) for p in stored_payloads(stack.database_url)}

    wait_for(all_stored, timeout=180, interval=0.5, what=f"{name}: every 202'd event stored")
    drained = time.monotonic() - fault_ended
    after_last = time.monotonic() - sender.finished
    stored = stored_payloads(stack.database_url)
    stored_ids = {identity(p) for p in stored}
    REPORT.append({"case": name, "sent": len(sender.bodies), "202": len(accepted), "stored": len(stored_ids),
                   "lost": len(accepted - stored_ids), "drain_seconds": round(drained, 1),
                   "after_last_push_seconds": round(after_last, 1)})
    assert accepted - stored_ids == set()
    assert stored_ids <= set(sent)  # nothing stored that was never sent
    if every_push_202:
        assert sender.status.count(202) == len(sender.bodies), set(sender.status)
    with psycopg2.connect(stack.database_url) as conn:
        convs, sessions = oracle.read_tables(conn)
    bodies = [sent[i] for i in stored_ids]
    assert convs == oracle.conversations(bodies)
    assert sessions == oracle.operator_sessions(bodies)


def test_worker_sigkill_mid_stream_then_restart(stack, case):
    sender = Sender(case["url"], numbered(600), rate=100)
    sender.start()
    time.sleep(2)
    victim = case["workers"].pop()
    victim.stop(signal.SIGKILL)
    time.sleep(1)
    case["workers"].append(start_worker(case["settings"], case["tmp"], name="f1", PUSHLINE_LEASE_SECONDS=LEASE))
    settle(stack, sender, "worker SIGKILL", time.monotonic())


def test_a_dead_workers_batch_is_processed_within_two_minutes(stack, case):
    """A batch claimed by a worker that then died (default 60 s lease) comes back in time."""
    from pushline.envelope import Envelope
    from pushline.queue import EventQueue

    for w in case["workers"]:
        w.stop()
    queue = EventQueue(redis.Redis.from_url(stack.redis_url), "faults")  # default lease
    bodies = numbered(50)
    for i, body in enumerate(bodies):
        queue.push(Envelope(f"dead-{i}", "default", time.time(), json.dumps(body).encode()).encode(), 10**6)
    held = queue.claim(100)  # ... and the claimant dies: nobody acks
    assert len(held.items) == 50 and queue.depth() == 0
    claimed_at = time.monotonic()
    case["workers"] = [start_worker(case["settings"], case["tmp"], name="f3")]  # default lease too
    wait_for(lambda: len(stored_payloads(stack.database_url)) == 50, timeout=130, interval=1,
             what="the dead worker's batch to be processed")
    waited = time.monotonic() - claimed_at
    REPORT.append({"case": "dead worker's batch (60 s lease)", "sent": 50, "202": 50, "stored": 50, "lost": 0,
                   "drain_seconds": round(waited, 1), "after_last_push_seconds": round(waited, 1)})
    assert waited < 120


def test_gunicorn_worker_sigkill_mid_stream(stack, case):
    sender = Sender(case["url"], numbered(600), rate=100)
    sender.start()
    time.sleep(2)
    master = case["web"].pid
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == master]
    assert children
    import os

    os.kill(children[0], signal.SIGKILL)
    settle(stack, sender, "gunicorn worker SIGKILL", time.monotonic())


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def outage(stack, case, name: str, server, sig: int, restart, events: int, rate: float, before: float,
           down: float, every_push_202: bool = False) -> None:
    """Push a stream; `before` seconds in, stop `server` with `sig`; restart it `down` seconds later."""
    sender = Sender(case["url"], numbered(events), rate=rate)
    sender.start()
    time.sleep(before)
    stack.kill(server, sig)
    time.sleep(down)
    restart()
    settle(stack, sender, name, time.monotonic(), every_push_202=every_push_202)


def test_redis_stopped_for_40_seconds(stack, case):
    # 50 s of pushes; every one must get a 202 (the spool takes them).
    outage(stack, case, "Redis stopped 40 s", stack.rd, signal.SIGTERM, stack.start_redis,
           events=1000, rate=20, before=3, down=40, every_push_202=True)


def test_redis_sigkill_and_restart_with_aof(stack, case):
    outage(stack, case, "Redis SIGKILL + AOF restart", stack.rd, signal.SIGKILL, stack.start_redis,
           events=600, rate=100, before=2, down=1)


def test_postgresql_stopped_for_40_seconds(stack, case):
    outage(stack, case, "PostgreSQL stopped 40 s", stack.pg, signal.SIGINT, stack.start_postgres,
           events=1000, rate=20, before=3, down=40, every_push_202=True)


def test_worker_sigterm_finishes_or_returns_its_batch(stack, case):
    sender = Sender(case["url"], numbered(600), rate=100)
    sender.start()
    time.sleep(2)
    worker = case["workers"].pop()
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 15
    assert "drain loop stopped" in worker.output()
    queue = redis.Redis.from_url(stack.redis_url)
    assert queue.zcard("faults:leases") == 0  # nothing left under a lease: acked or given back
    case["workers"].append(start_worker(case["settings"], case["tmp"], name="f2", PUSHLINE_LEASE_SECONDS=LEASE))
    settle(stack, sender, "worker SIGTERM", time.monotonic())


def test_web_sigterm_drops_nothing_it_acknowledged(stack, case):
    sender = Sender(case["url"], numbered(400), rate=100)
    sender.start()
    time.sleep(2)
    assert case["web"].stop(signal.SIGTERM) == 0
    ended = time.monotonic()
    sender.join(timeout=60)
    assert 0 < sender.status.count(202) < len(sender.bodies)
    assert set(sender.status) <= {202, 0}  # after shutdown: refused connections, never an error status
    settle(stack, sender, "web SIGTERM", ended)
