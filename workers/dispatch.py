"""The dispatcher: claims batches under lease and gives each to Celery as one task.

Events are not Celery messages: one message per event costs more than the
event's own work, and kombu's Redis transport can lose a message taken by
BRPOP before it is recorded as unacked. The reliable queue (pushline.queue)
stays the source of truth; a Celery message only names a batch that is
already under a lease. So a lost message costs one lease period (the sweep
returns a batch no task started to the queue, without a strike), and a
duplicated one nothing (the second task finds the lease gone, or the batch
already stored).

One dispatcher thread runs in each worker's main process (a bootstep, see
workers.celery_app). It keeps at most `capacity` batches in flight (twice the
pool's processes: one running and one waiting each), so that a batch waits
for a pool process far less than its lease. Tasks report back on a list of
the dispatcher's own; beside that, the leases themselves say which batches
are still in flight. When a task cannot be sent (Redis refuses writes at
maxmemory, which would otherwise stop the very draining that frees memory),
the dispatcher processes the batch in place.

The `Heartbeat` thread publishes the dispatcher's drain state and ends the
process when it is stuck (zulip's workers restart themselves the same way).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import psycopg2
import redis

from pushline import redis_client
from pushline.config import Settings
from pushline.db import connect, is_transient
from pushline.queue import Batch, EventQueue
from pushline.workerstats import WorkerStats
from workers import housekeeping
from workers.consumer import Consumer, Transient
from workers.registry import Registry

log = logging.getLogger(__name__)

MAX_BACKOFF = 15.0
RECONCILE_EVERY = 1.0  # seconds between looks at which in-flight batches are still leased
OVERDUE_CHECK_EVERY = 10.0  # seconds between checks that beat does its job
EXIT_STUCK = 3  # the process's exit status when it is stuck or its dispatcher died

def done_key(prefix: str, dispatcher: str) -> str:
    return f"{prefix}:dispatch:{dispatcher}:done"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def die(reason: str, exc_info=None, before_exit: Callable[[], object] | None = None) -> None:
    """End the whole worker, pool processes included: its supervisor restarts it.

    A dispatcher thread that dies alone would leave a Celery process that looks
    alive and drains nothing. Batches in flight keep their leases until they
    expire, and are then swept back to the queue.
    """
    log.critical("worker exits: %s", reason, exc_info=exc_info)
    for child in _children(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    if before_exit is not None:  # after the pool processes are gone: nothing of theirs can still commit
        with contextlib.suppress(Exception):
            before_exit()
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_STUCK)


class Dispatcher:
    def __init__(self, settings: Settings, registry: Registry, name: str, capacity: int,
                 send: Callable[[str, str, str], object], pool: str = "prefork", concurrency: int = 1):
        self.settings = settings
        self.name = name
        self.capacity = max(1, capacity)
        self.send = send
        self.pool = pool
        self.concurrency = concurrency
        self.consumer = Consumer(settings, registry, name)  # claims; processes in place when no task can be sent
        self.done_key = done_key(settings.queue_prefix, name)
        self.stopping = threading.Event()
        self.in_flight: dict[str, tuple[float, int]] = {}  # batch id -> (sent at, items)
        self.deadlines: dict[str, float] = {}  # batch id -> lease deadline, as last read
        # Read by the heartbeat thread and the inspect command.
        self.loop_beat = time.monotonic()
        self.phase = "starting"
        self.last_progress = time.time()  # a batch finished (or retried on purpose), or nothing in flight
        self.events_done = 0
        self.tasks_sent = 0
        self.in_place = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=512)
        self._next_reconcile = 0.0
        self._next_overdue = 0.0
        self.started_at = time.time()
        self.unreported_in_a_row = 0  # batches whose lease ended unreported (see Heartbeat.check)

    @property
    def queue(self) -> EventQueue:
        return self.consumer.queue

    # -- the loop --------------------------------------------------------
    def run(self) -> None:
        failures = 0
        log.info("dispatcher started", extra={"worker": self.name, "capacity": self.capacity})
        while not self.stopping.is_set():
            self.loop_beat = time.monotonic()
            try:
                self.step()
                failures = 0
            except (redis.RedisError, psycopg2.Error, Transient) as exc:
                if isinstance(exc, psycopg2.Error) and not is_transient(exc):
                    raise  # a bug outside any batch (batches isolate what is the data's)
                failures += 1
                delay = min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 6))
                if isinstance(exc, redis.ResponseError) and "maxmemory" in str(exc):
                    delay = 1.0  # Redis answers but is full: look again soon, drains free it
                log.warning("dispatcher: transient failure, retrying in %.1fs: %s: %s",
                            delay, type(exc).__name__, exc)
                self.phase = f"waiting {delay:.1f}s after {type(exc).__name__}"
                self.consumer.close()
                self.stopping.wait(delay)  # waiting on purpose is not being stuck
        self.return_unstarted()
        self.consumer.close()
        log.info("dispatcher stopped", extra={"worker": self.name})

    def stop(self) -> None:
        self.stopping.set()

    def step(self) -> None:
        now = time.time()
        full = len(self.in_flight) >= self.capacity
        self.phase = "waiting for a pool process" if full else "claiming"
        self.collect(block=full)
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + RECONCILE_EVERY
            self.reconcile()
        if time.monotonic() >= self._next_overdue:
            self._next_overdue = time.monotonic() + OVERDUE_CHECK_EVERY
            self.cover_for_beat()
        if not self.in_flight:
            self.last_progress = now  # nothing in flight: nothing can be stuck
        if len(self.in_flight) >= self.capacity:
            return
        # Block on an empty queue only when nothing is in flight; else come back
        # soon to collect what the pool finished.
        # The task reads the items itself: they need not cross to this process too.
        claimed = self.consumer.claim(block_seconds=redis_client.BLOCK_SECONDS if not self.in_flight else 0,
                                      with_items=False)
        if claimed is None:
            if self.in_flight:
                self.collect(block=True, timeout=0.05)
            return
        batch, kind = claimed
        self.in_flight[batch.id] = (time.time(), len(batch))
        self.phase = f"sending batch {batch.id}"
        try:
            self.send(batch.id, kind, self.name)
            self.tasks_sent += 1
        except Exception as exc:  # kombu wraps what Redis said; any failure to send is handled the same
            log.warning("could not send the task of batch %s (%s: %s); processing it in place",
                        batch.id, type(exc).__name__, exc)
            self.in_flight.pop(batch.id, None)
            self.phase = f"processing batch {batch.id} in place"
            try:  # the batch's items come with its start
                self.consumer.process(batch, kind)
            except Transient:
                self.consumer.give_back(batch, strike=False)
                raise
            self.in_place += 1
            self._progress(len(batch))

    def _progress(self, events: int) -> None:
        self.last_progress = time.time()
        self.events_done += events
        self._recent.append((self.last_progress, events))

    def collect(self, block: bool, timeout: float = 1.0) -> None:
        """Read what the tasks of this dispatcher reported: batch id, outcome, events."""
        client = self.queue.redis
        if block:
            got = client.blpop([self.done_key], timeout=timeout)
            entries = [got[1]] if got else []
        else:
            entries = client.lpop(self.done_key, 256) or []
        for entry in entries:
            batch_id, outcome, events = entry.decode().split("\t")
            if outcome == "retry":
                self.last_progress = time.time()  # waiting on purpose for a server to come back
                continue
            if outcome == "lease lost":
                # A late or duplicated message: the batch may still be in another
                # task's hands; reconcile() forgets it once its lease is gone.
                continue
            self.in_flight.pop(batch_id, None)
            self.unreported_in_a_row = 0
            self._progress(int(events))

    def reconcile(self) -> None:
        """Forget the in-flight batches that are no longer leased (stored, or swept
        back to the queue after their task was lost)."""
        self.deadlines = self.queue.holding(list(self.in_flight))
        for batch_id in [b for b in self.in_flight if b not in self.deadlines]:
            del self.in_flight[batch_id]
            # Usually its task acked it a moment before reporting (the report resets
            # this); a lease swept with no report at all means no task ever took it.
            self.unreported_in_a_row += 1

    def cover_for_beat(self) -> None:
        """Beat runs the housekeeping; while it is gone, the dispatchers do it."""
        late = housekeeping.overdue(self.queue, since=self.started_at)
        if not late:
            return
        log.warning("housekeeping not done by beat for a while (%s); doing it here", ", ".join(late))
        self.phase = "housekeeping in beat's stead"
        if "sweep_leases" in late:
            housekeeping.sweep_leases(self.queue)
        if "forward_spool" in late:
            conn = connect(self.settings.database_url, f"pushline-dispatcher {self.name}")
            try:
                housekeeping.forward_spool(conn, self.queue)
            finally:
                conn.close()
        if "roll_partitions" in late:
            housekeeping.roll_partitions(self.settings, self.queue)

    def return_unstarted(self) -> None:
        """On shutdown, give back the batches no task began: they would otherwise
        wait for their lease to end."""
        if not self.in_flight:
            return
        with contextlib.suppress(redis.RedisError):
            started = self.queue.redis.hmget(self.queue.started, list(self.in_flight))
            for batch_id, mark in zip(list(self.in_flight), started, strict=True):
                if mark is None:
                    self.consumer.give_back(_batch(batch_id), strike=False)

    def wedged(self) -> bool:
        """More batches sent in a row than fit in flight, each of whose lease ended
        with no task reporting on it: Celery is not taking this worker's tasks (a
        consumer wedged on a broker connection). An outage longer than the lease
        loses at most the batches in flight at the time, fewer than that."""
        return self.unreported_in_a_row > self.capacity

    # -- what ops see ------------------------------------------------------
    def events_per_second(self, window: float = 60.0) -> float:
        now = time.time()
        recent = [(t, n) for t, n in self._recent if now - t <= window]
        return round(sum(n for _, n in recent) / window, 1)

    def state(self) -> dict:
        first = min(self.in_flight, key=lambda b: self.in_flight[b][0], default=None)
        return {
            "last_progress": round(self.last_progress, 3),
            "beat": round(time.time(), 3),
            "phase": self.phase,
            "pool": self.pool,
            "concurrency": self.concurrency,
            "capacity": self.capacity,
            "in_flight": len(self.in_flight),
            "batch_in_hand": first,
            "lease_deadline": self.deadlines.get(first) if first else None,
            "batches": {b: {"sent_at": round(t, 3), "items": n, "lease_deadline": self.deadlines.get(b)}
                        for b, (t, n) in sorted(self.in_flight.items(), key=lambda kv: kv[1][0])[:20]},
            "events_done": self.events_done,
            "events_per_second": self.events_per_second(),
            "tasks_sent": self.tasks_sent,
            "processed_in_place": self.in_place,
        }


def _batch(batch_id: str) -> Batch:
    return Batch(batch_id, [])


class Heartbeat(threading.Thread):
    """Publishes the dispatcher's drain state, and ends a stuck worker.

    Stuck means: the dispatcher's own loop has not come round for
    PUSHLINE_WORKER_STALL_SECONDS (a hang no socket option notices), or
    batches are in flight and none finished for that long (a pool whose
    processes hang on a server that stopped answering).
    """

    def __init__(self, dispatcher: Dispatcher, stall_seconds: float):
        super().__init__(name="pushline-heartbeat", daemon=True)
        self.dispatcher = dispatcher
        self.stall_seconds = stall_seconds
        self.every = max(1.0, min(5.0, dispatcher.settings.lease_seconds / 4))
        self.stopping = threading.Event()
        self._client: redis.Redis | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.check()
            try:
                self.publish()
            except redis.RedisError as exc:
                log.warning("heartbeat: %s", exc)
                self._client = None

    def check(self) -> None:
        d = self.dispatcher
        looped = time.monotonic() - d.loop_beat
        if looped > self.stall_seconds:
            die(f"no progress: the dispatcher stuck for {looped:.0f}s while {d.phase}")
        if d.wedged():
            die(f"no progress: {d.unreported_in_a_row} batches sent in a row were never taken by a pool process"
                " (Celery is not consuming this worker's tasks)")
        idle = time.time() - d.last_progress
        if d.in_flight and idle > self.stall_seconds:
            die(f"no progress: no batch finished for {idle:.0f}s with {len(d.in_flight)} in flight ({d.phase})")

    def publish(self) -> None:
        if self._client is None:
            self._client = redis_client.client(self.dispatcher.settings.redis_url, "worker")
        WorkerStats(self._client, self.dispatcher.settings.queue_prefix).beat(self.dispatcher.name,
                                                                             self.dispatcher.state())

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(redis.RedisError):
            if self._client is not None:
                WorkerStats(self._client, self.dispatcher.settings.queue_prefix).forget(self.dispatcher.name)
