"""Nothing acknowledged is lost (CONTRACT 6): real processes, real faults.

The module runs its own PostgreSQL and redis-server (so it can stop, pause and
kill them), gunicorn and Celery workers, and signals by PID only. Each case
sends numbered events while a fault happens, timing every answer, then checks
that every event that got a 202 is in `events`, counted once per 202, and the
tables equal the oracle of what was stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import redis

from pushline import devstack
from pushline.db import migrate
from tests import http_client as http
from tests import oracle, oracle_webhooks
from tests.conftest import TABLES, TOKEN, free_port, make_settings, start_beat, start_web, start_worker, wait_for
from tests.helpers import closed, connected, conversation, disconnected, login, logout, pushed

pytestmark = [pytest.mark.slow, pytest.mark.fault]

REPORT: list[dict] = []
REPORT_NOTES: list[str] = []  # figures a case measured beside its row
LEASE = "10"  # seconds; the default (60) brings a dead worker's batch back within ~65 s
PREFIX = "faults"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, from /proc/<pid>/stat; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (_stat(int(p.name)) or ("", None))[1] == pid]


@contextlib.contextmanager
def paused(pid: int, with_children: bool = False):
    """SIGSTOP `pid` for the block (with its children: SIGSTOP on the postmaster
    alone leaves its backends running; it is stopped first, so it forks no new
    one). Yields `resume`, which may be called early; SIGCONT always follows."""
    stopped = [pid]
    os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        while stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped.pop(), signal.SIGCONT)

    try:
        if with_children:
            for child in children_of(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGSTOP)
                    stopped.append(child)
        wait_for(lambda: all((_stat(p) or ("T",))[0] in "Tt" for p in stopped), timeout=5,
                 what=f"processes {stopped} to be stopped")
        yield resume
    finally:
        resume()


class Stack:
    """PostgreSQL and Redis of our own, which the tests may stop, pause and kill."""

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

    @contextlib.contextmanager
    def stopped(self, emb: devstack.Embedded, sig: int, restart):
        """The server ends on `sig` for the block, and is started again after it."""
        self.kill(emb, sig)
        try:
            yield
        finally:
            restart()

    def paused(self, emb: devstack.Embedded):
        """The server (with every process of it) stops answering without refusing."""
        return paused(emb.children[-1].proc.pid, with_children=emb is self.pg)

    def sql(self, text: str, *params) -> list[tuple]:
        with contextlib.closing(psycopg2.connect(self.database_url)) as conn, conn, conn.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        self.rd.stop()
        self.pg.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("faults"))
    yield stack
    stack.stop()


def numbered(n: int, offset: int = 0) -> list[dict]:
    """Distinct events, both formats on one URL: per group of eight, a login, a
    start, an end and a logout (the Push API), then a user's connection, a
    conversation pushed and closed, and a disconnection (today's webhooks)."""
    base = dt.datetime(2014, 1, 1, 8)
    base_v2 = dt.datetime(2024, 3, 5, 8, tzinfo=dt.UTC)
    bodies = []
    for i in range(offset, offset + n):
        group, kind = divmod(i, 8)
        op = group % 7
        if kind < 4:
            at = (base + dt.timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
            bodies.append([login(op, at), conversation("start", group, at, op=op),
                           conversation("end", group, at, op=op), logout(op, at)][kind])
        else:
            at = (base_v2 + dt.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            cid = f"00000000-0000-4000-8000-{group:012d}"
            bodies.append([connected(op, at), pushed(cid, op, at), closed(cid, [op], at),
                           disconnected(op, at)][kind - 4])
    return bodies


@dataclass
class Answer:
    status: int  # 0: no answer (refused, reset, or the client's 10 s timeout)
    seconds: float
    retry_after: str | None


class Sender(threading.Thread):
    """Pushes `bodies` (dicts, or raw JSON bytes) at `rate` per second; `push` sends one now.

    Every push made, in order, is in `sent` with its answer and how long it took."""

    def __init__(self, url: str, bodies: list, rate: float):
        super().__init__(daemon=True)
        self.url, self.bodies, self.interval = url, bodies, 1.0 / rate
        self.sent: list[tuple[dict | bytes, Answer]] = []
        self.finished = time.monotonic()

    def push(self, body) -> Answer:
        started = time.monotonic()
        resp = http.post_json(self.url, body if isinstance(body, bytes) else json.dumps(body).encode())
        self.finished = time.monotonic()
        answer = Answer(resp.status, self.finished - started, resp.headers.get("retry-after"))
        self.sent.append((body, answer))
        return answer

    def run(self) -> None:
        start = time.monotonic()
        for i, body in enumerate(self.bodies):
            self.push(body)
            time.sleep(max(0.0, start + (i + 1) * self.interval - time.monotonic()))

    @property
    def status(self) -> list[int]:
        return [a.status for _, a in self.sent]

    def accepted(self) -> list:
        return [b for b, a in self.sent if a.status == 202]

    def slowest(self) -> float | None:
        return max((a.seconds for _, a in self.sent), default=None)


def _number(text: str) -> decimal.Decimal:
    return decimal.Decimal(text).normalize()


def identity(body) -> str:
    """An event's identity (CONTRACT 4), from a body (dict or raw JSON) or a stored payload's text.

    Numbers are compared as exact decimals: 1e400 as pushed and as PostgreSQL prints it are equal."""
    text = body if isinstance(body, bytes | str) else json.dumps(body)
    value = json.loads(text, parse_int=_number, parse_float=_number)
    if isinstance(value.get("eventType"), str) and not isinstance(value.get("name"), str):
        return json.dumps(["webhook", value.get("eventId")])  # CONTRACT 7: one eventId, one event
    return json.dumps([value.get("name"), (value.get("datetime") or {}).get("created"), value.get("parameters")],
                      sort_keys=True, default=str)


def stored_events(stack) -> dict[str, int]:
    """Identity -> deliveries of every row in `events`."""
    return {identity(text): n for text, n in stack.sql("SELECT payload::text, deliveries FROM events")}


def metric(base: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", http.get(base + "/metrics").body.decode(), re.M)
    return float(found.group(1)) if found else None


@pytest.fixture
def case(stack, tmp_path, request):
    """Fresh tables and queue, a web tier, one worker and beat on the stack."""
    stack.sql(f"TRUNCATE {TABLES} RESTART IDENTITY")
    redis.Redis.from_url(stack.redis_url).flushdb()
    settings = make_settings(stack.database_url, stack.redis_url, PUSHLINE_QUEUE_PREFIX=PREFIX)
    web, base = start_web(settings, tmp_path)
    ctx = {"settings": settings, "web": web, "base": base, "url": f"{base}/push/{TOKEN}", "tmp": tmp_path,
           "workers": [start_worker(settings, tmp_path, name="f0", PUSHLINE_LEASE_SECONDS=LEASE)],
           "beat": start_beat(settings, tmp_path, PUSHLINE_LEASE_SECONDS=LEASE)}
    yield ctx
    ctx["beat"].stop()
    web.stop()
    for w in ctx["workers"]:
        w.stop()


def add_worker(case, name: str, **env: str):
    worker = start_worker(case["settings"], case["tmp"], name=name, PUSHLINE_LEASE_SECONDS=LEASE, **env)
    case["workers"].append(worker)
    return worker


def settle(stack, sender: Sender, name: str, fault_ended: float, statuses: set[int] | None = None,
           answered_within: float | None = None) -> None:
    """Wait for everything accepted to be stored; record the figures; check them.

    `statuses`: the only answers allowed; `answered_within`: seconds every push
    was answered in. Always: every 503 says when to retry, every 202'd event is
    stored and counted once per 202 (at most once per push), the tables equal
    the oracle of what was stored."""
    sender.join(timeout=300)
    accepted = {identity(b) for b in sender.accepted()}
    sent = {identity(b): b for b, _ in sender.sent}
    try:
        wait_for(lambda: accepted <= set(stored_events(stack)), timeout=180, interval=0.5,
                 what=f"{name}: every 202'd event stored")
    finally:  # the row is recorded even when the wait failed
        drained = time.monotonic() - fault_ended
        after_last = time.monotonic() - sender.finished
        stored = stored_events(stack)
        REPORT.append({"case": name, "sent": len(sender.sent), "202": sender.status.count(202), "stored": len(stored),
                       "lost": len(accepted - set(stored)), "drain_seconds": round(drained, 1),
                       "after_last_push_seconds": round(after_last, 1), "slowest_push_seconds": sender.slowest()})
    assert accepted - set(stored) == set()
    assert set(stored) <= set(sent)  # nothing stored that was never sent
    if statuses is not None:
        assert set(sender.status) <= statuses, sorted(set(sender.status))
    assert all(a.retry_after for _, a in sender.sent if a.status == 503), "a 503 without Retry-After"
    if answered_within is not None:
        slow = [(i, a) for i, (_, a) in enumerate(sender.sent) if a.seconds >= answered_within]
        assert not slow, f"{len(slow)} pushes answered in {answered_within} s or more: {slow[:5]}"
    answers: dict[str, list[int]] = {}
    for body, answer in sender.sent:
        answers.setdefault(identity(body), []).append(answer.status)
    miscounted = [(k, n, answers[k]) for k, n in stored.items() if not answers[k].count(202) <= n <= len(answers[k])]
    assert not miscounted, f"{len(miscounted)} events with deliveries outside [202s, pushes]: {miscounted[:3]}"
    with contextlib.closing(psycopg2.connect(stack.database_url)) as conn:
        convs, sessions = oracle.read_tables(conn)
        webhook_tables = oracle_webhooks.read_webhook_tables(conn)
    bodies = [sent[i] if isinstance(sent[i], dict) else json.loads(sent[i]) for i in stored]
    webhooks = [b for b in bodies if isinstance(b.get("eventType"), str) and not isinstance(b.get("name"), str)]
    push_api = [b for b in bodies if b not in webhooks]
    assert convs == oracle.conversations(push_api)
    assert sessions == oracle.operator_sessions(push_api)
    assert oracle_webhooks.mismatch(webhook_tables, oracle_webhooks.expected(webhooks)) is None


def test_worker_sigkill_mid_stream_then_restart(stack, case):
    sender = Sender(case["url"], numbered(600), rate=100)
    sender.start()
    time.sleep(2)
    victim = case["workers"].pop()
    victim.stop(signal.SIGKILL)
    time.sleep(1)
    add_worker(case, "f1")
    settle(stack, sender, "worker SIGKILL", time.monotonic())


def test_a_dead_workers_batch_is_processed_within_two_minutes(stack, case):
    """A batch claimed by a worker that then died (default 60 s lease) comes back in time."""
    from pushline.envelope import Envelope
    from pushline.queue import EventQueue

    for w in case["workers"]:
        w.stop()
    queue = EventQueue(redis.Redis.from_url(stack.redis_url), PREFIX)  # default lease
    bodies = numbered(50)
    for i, body in enumerate(bodies):
        queue.push(Envelope(f"dead-{i}", "default", time.time(), json.dumps(body).encode()).encode(), 10**6)
    held = queue.claim(100)  # ... and the claimant dies: nobody acks
    assert len(held.items) == 50 and queue.depth() == 0
    claimed_at = time.monotonic()
    case["workers"] = [start_worker(case["settings"], case["tmp"], name="f3")]  # default lease too
    wait_for(lambda: len(stored_events(stack)) == 50, timeout=130, interval=1,
             what="the dead worker's batch to be processed")
    waited = time.monotonic() - claimed_at
    REPORT.append({"case": "dead worker's batch (60 s lease)", "sent": 50, "202": 50, "stored": 50, "lost": 0,
                   "drain_seconds": round(waited, 1), "after_last_push_seconds": round(waited, 1),
                   "slowest_push_seconds": None})
    assert waited < 120


def test_gunicorn_worker_sigkill_mid_stream(stack, case):
    sender = Sender(case["url"], numbered(600), rate=100)
    sender.start()
    time.sleep(2)
    children = children_of(case["web"].pid)
    assert children
    os.kill(children[0], signal.SIGKILL)
    settle(stack, sender, "gunicorn worker SIGKILL", time.monotonic())


def outage(stack, case, name: str, fault, events: int, rate: float, before: float, down: float, **checks) -> None:
    """Push a stream; `before` seconds in, enter `fault` (a context manager) and leave it `down` seconds later."""
    sender = Sender(case["url"], numbered(events), rate=rate)
    sender.start()
    time.sleep(before)
    with fault:
        time.sleep(down)
    settle(stack, sender, name, time.monotonic(), **checks)


def test_redis_stopped_for_40_seconds(stack, case):
    # 50 s of pushes; every one must get a 202 (the spool takes them).
    outage(stack, case, "Redis stopped 40 s", stack.stopped(stack.rd, signal.SIGTERM, stack.start_redis),
           events=1000, rate=20, before=3, down=40, statuses={202})


def test_redis_sigkill_and_restart_with_aof(stack, case):
    outage(stack, case, "Redis SIGKILL + AOF restart", stack.stopped(stack.rd, signal.SIGKILL, stack.start_redis),
           events=600, rate=100, before=2, down=1)


def test_postgresql_stopped_for_40_seconds(stack, case):
    outage(stack, case, "PostgreSQL stopped 40 s", stack.stopped(stack.pg, signal.SIGINT, stack.start_postgres),
           events=1000, rate=20, before=3, down=40, statuses={202})


def test_redis_paused_for_20_seconds(stack, case):
    """A Redis that stops answering without refusing costs a push a few seconds at most (CONTRACT 6)."""
    outage(stack, case, "Redis paused 20 s", stack.paused(stack.rd), events=560, rate=20, before=3, down=20,
           statuses={202, 503}, answered_within=5)


def test_postgresql_paused_for_20_seconds(stack, case):
    outage(stack, case, "PostgreSQL paused 20 s", stack.paused(stack.pg), events=560, rate=20, before=3, down=20,
           statuses={202}, answered_within=5)


def held_batches(client: redis.Redis) -> dict[str, float]:
    """Claimed batches that hold events: batch id -> lease deadline."""
    leases = client.zrange(f"{PREFIX}:leases", 0, -1, withscores=True)
    return {b.decode(): deadline for b, deadline in leases if client.llen(f"{PREFIX}:batch:{b.decode()}")}


def test_worker_paused_past_its_lease_changes_nothing(stack, case):
    """A worker paused while it holds a batch loses it to the other worker; resumed, it counts nothing twice."""
    client = redis.Redis.from_url(stack.redis_url)
    add_worker(case, "f4")
    victim = case["workers"][0]
    sender = Sender(case["url"], numbered(1400), rate=40)
    sender.start()
    time.sleep(2)
    for _attempt in range(10):
        with paused(victim.pid, with_children=True):  # its dispatcher and its pool processes
            paused_at = time.monotonic()
            # Leases are extended every 2.5 s: one frozen for 3 s is the paused worker's.
            first = held_batches(client)
            time.sleep(3)
            frozen = [b for b, deadline in held_batches(client).items() if first.get(b) == deadline]
            if frozen:
                wait_for(lambda held=set(frozen): not held & set(held_batches(client)), timeout=20,
                         what="the paused worker's batch to be taken back from it")
                time.sleep(max(0.0, paused_at + 25 - time.monotonic()))
                break
        time.sleep(0.3)
    else:
        pytest.fail("the worker was never caught holding a batch")
    settle(stack, sender, "worker paused 25 s (lease 10)", time.monotonic(), statuses={202})


def test_redis_at_maxmemory_spools_while_workers_drain(stack, case):
    """Redis refuses writes (OOM, noeviction): pushes go to the spool, queued events keep being stored."""
    client = redis.Redis.from_url(stack.redis_url)
    worker = case["workers"][0]
    wait_for(lambda: " ready." in worker.output(), what="the worker's Celery consumer to be ready")
    sender = Sender(case["url"], numbered(1500), rate=60)  # 25 s: still pushing through the window
    with paused(worker.pid, with_children=True) as resume_worker:
        sender.start()
        wait_for(lambda: client.llen(f"{PREFIX}:incoming") >= 250, timeout=20, what="a backlog in the queue")
        with redis_full(client):
            wait_for(lambda: spooled(stack) > 0, timeout=10, what="pushes refused by Redis to be spooled")
            assert not stored_events(stack)
            resume_worker()
            wait_for(lambda: stored_events(stack), timeout=15, what="workers to store events while Redis is full")
            spool_then, sent_then = spooled(stack), len(sender.status)
            time.sleep(4)
            grown = len(stored_events(stack))
            # Every push answered in the window went to the spool (one may be in flight at each end).
            sent_now = len(sender.status)
            assert sent_now > sent_then, "the stream ended before the window: make it longer"
            assert spooled(stack) - spool_then >= sent_now - sent_then - 1, \
                "Redis took pushes again before maxmemory was raised"
            assert worker.popen.poll() is None, f"the worker died while Redis was full: {worker.output()[-3000:]}"
        ended = time.monotonic()
    REPORT_NOTES.append(f"Redis at maxmemory: {grown} events stored while Redis refused writes")
    settle(stack, sender, "Redis at maxmemory", ended, statuses={202})


def spooled(stack) -> int:
    return stack.sql("SELECT count(*) FROM spool")[0][0]


@contextlib.contextmanager
def redis_full(client: redis.Redis, margin: int = 1024):
    """Redis at its maxmemory (noeviction) for the block: maxmemory is set just above
    used_memory and follows it down, never up, so that memory the workers free
    by draining is not room for pushes either; then maxmemory 0 (no limit)."""
    stop = threading.Event()
    limit = [None]

    def clamp() -> None:
        cap = client.info("memory")["used_memory"] + margin
        if limit[0] is None or cap < limit[0]:
            client.config_set("maxmemory", cap)
            limit[0] = cap

    def follow() -> None:
        while not stop.wait(0.1):
            clamp()

    client.config_set("maxmemory-policy", "noeviction")
    clamp()
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        client.config_set("maxmemory", 0)


# The incident's two inputs: a number beyond a float (and a redelivery of it in
# a later batch), and an instant whose local month differs from its UTC month.
BEYOND_A_FLOAT = b'{"name": "x.y", "n": 1e400}'


def test_a_number_beyond_a_float_delivered_twice(stack, case):
    sender = Sender(case["url"], numbered(200), rate=50)
    for times in (1, 2):  # the second push once the first is stored: another batch
        assert sender.push(BEYOND_A_FLOAT).status == 202
        wait_for(lambda n=times: stored_events(stack).get(identity(BEYOND_A_FLOAT)) == n, timeout=30,
                 what=f"x.y stored with deliveries {times}")
    pushed_at = time.monotonic()
    sender.start()
    settle(stack, sender, "1e400 twice, then events", pushed_at, statuses={202})
    assert stack.sql("SELECT deliveries, status, payload->>'n' FROM events WHERE name = 'x.y'") == [
        (2, "unhandled", "1" + "0" * 400)]


def month_end_west_of_utc() -> tuple[str, dt.datetime]:
    """21:30 at -03:00 on the last day of the month two months back: 00:30 UTC on
    the 1st of the next month, inside the monthly partitions' range."""
    first = dt.date.today().replace(day=1)
    end = (first - dt.timedelta(days=1)).replace(day=1) - dt.timedelta(days=1)
    local = dt.datetime(end.year, end.month, end.day, 21, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    return local.isoformat(), local.astimezone(dt.UTC)


def test_a_month_end_west_of_utc_goes_to_the_utc_month(stack, case):
    created, at = month_end_west_of_utc()
    assert at.day == 1 and at.month != dt.date.fromisoformat(created[:10]).month
    sender = Sender(case["url"], numbered(200), rate=50)
    assert sender.push(login(99, created)).status == 202
    pushed_at = time.monotonic()
    sender.start()
    settle(stack, sender, "month end at -03:00, then events", pushed_at, statuses={202})
    assert stack.sql("SELECT tableoid::regclass::text, created_at FROM events WHERE name = 'operator.login'"
                     " AND payload->'parameters'->>'operator_id' = '99'") == [(f"events_{at:%Y_%m}", at)]
    assert stack.sql("SELECT count(*) FROM events_undated") == [(0,)]  # every event here is dated


def test_a_stalled_worker_is_visible_and_ends_itself(stack, case):
    """PostgreSQL paused 30 s: the oldest pending age grows on /metrics, the worker
    (stall limit 8 s) exits with status 3 saying why; a new one drains everything."""
    case["workers"].pop().stop()
    worker = add_worker(case, "f5", PUSHLINE_WORKER_STALL_SECONDS="8")
    sender = Sender(case["url"], numbered(700), rate=20)
    sender.start()
    time.sleep(2)
    with stack.paused(stack.pg):
        paused_at = time.monotonic()
        oldest = wait_for(lambda: (v := metric(case["base"], "pushline_oldest_pending_seconds") or 0) > 5 and v,
                          timeout=20, interval=0.5, what="pushline_oldest_pending_seconds to pass 5 s")
        wait_for(lambda: worker.popen.poll() is not None, timeout=25, interval=0.5,
                 what="the stalled worker to exit")
        exited_after = time.monotonic() - paused_at
        assert worker.popen.returncode == 3, worker.output()[-2000:]
        assert "no progress" in worker.output()
        time.sleep(max(0.0, paused_at + 30 - time.monotonic()))
    REPORT_NOTES.append(f"stalled worker: pushline_oldest_pending_seconds {oldest:.1f} on /metrics during the pause;"
                        f" the worker exited with status 3 {exited_after:.1f} s into it")
    resumed = time.monotonic()
    add_worker(case, "f6")
    settle(stack, sender, "PostgreSQL paused 30 s, stall 8 s", resumed, statuses={202}, answered_within=5)


def test_worker_sigterm_finishes_or_returns_its_batch(stack, case):
    sender = Sender(case["url"], numbered(600), rate=100)
    sender.start()
    time.sleep(2)
    worker = case["workers"].pop()
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 15
    assert "dispatcher stopped" in worker.output()
    queue = redis.Redis.from_url(stack.redis_url)
    assert queue.zcard(f"{PREFIX}:leases") == 0  # nothing left under a lease: acked or given back
    add_worker(case, "f2")
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
