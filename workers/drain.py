"""The worker's consumer: claim a batch, store it, acknowledge it; forever.

Runs inside the Celery worker (see workers.celery_app). Events are not Celery
messages: one message per event costs more than the event's own work, and
kombu's Redis transport can lose a message taken by BRPOP before it is
recorded as unacked. Instead each loop claims up to PUSHLINE_BATCH_SIZE events
from the reliable queue (pushline.queue) and writes them in one transaction.

This class owns the plumbing, so handlers stay plain functions: the database
connection, the transaction, retries with backoff, counters. Beside it, a
heartbeat thread keeps the leases of the batch in hand alive, publishes the
worker's last progress, and ends the process when the loop is stuck (see
`Heartbeat`). What the loop cannot classify never stops it: workers.batch
isolates it; what cannot be stored at all is parked as a dead letter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import threading
import time
from collections import Counter

import psycopg2
import redis

from pushline import partitions, redis_client, spool
from pushline.config import Settings
from pushline.db import connect, is_transient
from pushline.queue import STRIKE_LIMIT, Batch, EventQueue
from pushline.workerstats import WorkerStats
from workers.batch import process_items
from workers.registry import Registry

log = logging.getLogger(__name__)

RECLAIM_EVERY = 5.0  # seconds between sweeps for batches of dead workers
FORWARD_EVERY = 1.0  # seconds between looks at the fallback spool
PARTITIONS_EVERY = 600.0  # seconds between checks that next months have partitions
STRUCK_REASON = (f"worker: {STRIKE_LIMIT} workers died or failed while processing this event; stored unprocessed"
                 " (replay it once the cause is fixed)")
MAX_BACKOFF = 15.0
EXIT_STUCK = 3  # the process's exit status when its drain loop died or is stuck


def die(reason: str, exc_info=None) -> None:
    """End the whole process: its supervisor restarts it (zulip's workers do the same).

    A thread that dies alone would leave a Celery process that looks alive and
    drains nothing. Any batch in hand was released, or its lease will expire.
    """
    log.critical("worker exits: %s", reason, exc_info=exc_info)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_STUCK)


class DrainLoop:
    def __init__(self, settings: Settings, registry: Registry, name: str = "worker"):
        self.settings = settings
        self.registry = registry
        self.name = name
        self.stopping = threading.Event()
        self.counts: Counter = Counter()
        self._conn = None
        self._queue: EventQueue | None = None
        self._next_reclaim = 0.0
        self._next_forward = 0.0
        self._next_partitions = 0.0
        # Read by the heartbeat thread.
        self.in_hand: dict[str, float] = {}  # batch id -> lease deadline (unix time)
        self.step_started: float | None = None  # monotonic; None between steps
        self.phase = "starting"
        self.last_progress = time.time()  # a batch stored, or nothing to do
        self.events_done = 0

    # -- resources, made lazily and dropped on failure -------------------
    @property
    def queue(self) -> EventQueue:
        if self._queue is None:
            client = redis_client.client(self.settings.redis_url, "worker")
            self._queue = EventQueue(client, self.settings.queue_prefix, self.settings.lease_seconds)
        return self._queue

    @property
    def stats(self) -> WorkerStats:
        return WorkerStats(self.queue.redis, self.settings.queue_prefix)

    @property
    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings.database_url, f"pushline-worker {self.name}")
        return self._conn

    def close(self) -> None:
        self._drop_connection()
        if self._queue is not None:
            self._queue.redis.close()
            self._queue = None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to release
                self._conn.close()
        self._conn = None

    # -- the loop --------------------------------------------------------
    def run(self) -> None:
        failures = 0
        # Everything imported so far (Celery, kombu, marshmallow...) lives as long as
        # the process: moved out of the collector's sight, it is not rescanned by
        # every full collection the batches' garbage triggers.
        gc.freeze()
        log.info("drain loop started", extra={"worker": self.name})
        while not self.stopping.is_set():
            try:
                self.step()
                failures = 0
                self.last_progress = time.time()
            except (redis.RedisError, psycopg2.Error) as exc:
                if isinstance(exc, psycopg2.Error) and not is_transient(exc):
                    raise  # a bug outside any batch (batches isolate what is the data's)
                failures += 1
                with contextlib.suppress(redis.RedisError):
                    self.stats.count("retries")
                delay = min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 6))
                if isinstance(exc, redis.ResponseError) and "maxmemory" in str(exc):
                    # Redis answers but is full (its blocking claim on an empty queue is
                    # refused): look again soon, so that the spool drains once it has room.
                    delay = 1.0
                log.warning("transient failure, retrying in %.1fs: %s: %s", delay, type(exc).__name__, exc)
                if isinstance(exc, psycopg2.Error):
                    self._drop_connection()
                self.phase = f"waiting {delay:.1f}s after {type(exc).__name__}"
                self.stopping.wait(delay)  # waiting on purpose is not being stuck: no step runs
        self.close()
        log.info("drain loop stopped", extra={"worker": self.name})

    def stop(self) -> None:
        self.stopping.set()

    def step(self, block_seconds: float = redis_client.BLOCK_SECONDS) -> int:
        """Claim and store one batch; returns the number of items handled."""
        self.step_started = time.monotonic()  # the heartbeat's watchdog times each step
        try:
            return self._step(block_seconds)
        finally:
            self.step_started = None

    def _step(self, block_seconds: float) -> int:
        self.housekeeping()
        # Events a dead worker held: those that outlived too many workers are
        # stored as rejected unprocessed; the others are processed one at a time.
        self.phase = "claiming"
        one = self.queue.claim_one(self.queue.struck, self.queue.suspect)
        if one is not None:
            source, batch = one
            if source == self.queue.struck:
                self.store(batch, suspect=True, reject=STRUCK_REASON)
            else:
                self.store(batch, suspect=True)
            return 1
        batch = self.queue.claim(self.settings.batch_size, block_seconds=block_seconds,
                                 wait_seconds=self.settings.batch_wait_ms / 1000)
        if batch is None:
            return 0
        self.store(batch)
        return len(batch.items)

    def housekeeping(self) -> None:
        """Small periodic duties; none of them may keep batches from being claimed."""
        now = time.monotonic()
        if now >= self._next_forward:
            self._next_forward = now + FORWARD_EVERY
            self.phase = "forwarding the spool"
            try:
                while forwarded := spool.forward(self.conn, self.queue):
                    log.info("forwarded %d spooled events to the queue", forwarded)
            except redis.ResponseError as exc:
                # Redis refuses writes (maxmemory): the spool keeps its events
                # (the forward's transaction rolled back) while batches drain.
                log.warning("spool not forwarded, Redis refuses it: %s", exc)
                self._next_forward = now + 5 * FORWARD_EVERY
        if now >= self._next_reclaim:
            self._next_reclaim = now + RECLAIM_EVERY
            self.phase = "reclaiming expired leases"
            moved = self.queue.reclaim()
            if moved:
                log.warning("returned %d events of expired leases to the queue", moved)
                self.stats.count("reclaimed", moved)
        if now >= self._next_partitions:
            self._next_partitions = now + PARTITIONS_EVERY
            self.phase = "creating partitions ahead"
            try:
                partitions.roll(self.settings.database_url)
            except psycopg2.Error as exc:
                log.warning("partitions not rolled forward (retried in %.0f s): %s", PARTITIONS_EVERY, exc)

    def store(self, batch: Batch, suspect: bool = False, reject: str | None = None) -> None:
        self.in_hand[batch.id] = time.time() + self.settings.lease_seconds
        self.phase = f"storing batch {batch.id} ({len(batch.items)} items)"
        try:
            result = process_items(self.conn, batch.items, self.registry, self.settings.tzinfo,
                                   self.settings.max_custom_data_keys, reject=reject)
        except psycopg2.errors.QueryCanceled:
            # A statement timeout: a hung server, or one item that makes a statement
            # slow. A batch goes to the suspects, one at a time; a single item that
            # times out alone gets a strike, so the second kind cannot stall us.
            self._give_back(batch, strike=len(batch.items) == 1, suspect=True)
            raise
        except (redis.RedisError, psycopg2.Error) as exc:
            if isinstance(exc, redis.RedisError) or is_transient(exc):
                self._give_back(batch, strike=False)
                raise
            log.error("batch failed in an unexpected way; its items are retried one at a time", exc_info=True)
            self._give_back(batch, strike=True)
            return
        except Exception:
            # Not the database's fault and not isolated by process_items: an item
            # we cannot classify. One at a time with strikes, it ends stored rejected.
            log.error("batch failed in an unexpected way; its items are retried one at a time", exc_info=True)
            self._give_back(batch, strike=True)
            return
        finally:
            self.in_hand.pop(batch.id, None)
        if not self.queue.ack(batch, suspect=suspect, dead=result.dead):
            log.warning("batch %s was stored after its lease had ended; another worker had it too (no effect)",
                        batch.id)
        if result.dead:
            log.error("%d items could not be stored and were parked as dead letters", len(result.dead))
        self.counts.update(result.counts)
        self.events_done += len(batch.items)
        lag = (dt.datetime.now(dt.UTC) - result.oldest_receipt).total_seconds() if result.oldest_receipt else 0.0
        try:
            self.stats.record_batch(self.name, result.counts, len(batch.items), lag)
        except redis.RedisError:  # figures only; the batch itself is safely stored
            log.warning("could not record worker metrics")

    def _give_back(self, batch: Batch, strike: bool, suspect: bool = False) -> None:
        """Hand the batch back at once rather than after its lease expires."""
        try:
            self.queue.release(batch, strike=strike, suspect=suspect or strike)
        except redis.RedisError:
            log.warning("could not release batch %s; its lease will return it", batch.id)


class Heartbeat(threading.Thread):
    """Keeps the loop's leases alive, publishes its progress, and ends a stuck process.

    Leases are extended every quarter lease while a batch is in hand, so a slow
    batch is never taken for a dead worker's (dramatiq's heartbeats do the same);
    a worker that is really gone, or paused, stops extending and loses them.
    A step that runs longer than PUSHLINE_WORKER_STALL_SECONDS (a hang on a
    server that stopped answering, which no socket option notices) ends the
    process, so that its supervisor starts a fresh one.
    """

    def __init__(self, loop: DrainLoop, stall_seconds: float):
        super().__init__(name="pushline-heartbeat", daemon=True)
        self.loop = loop
        self.stall_seconds = stall_seconds
        self.every = max(1.0, min(5.0, loop.settings.lease_seconds / 4))
        self.stopping = threading.Event()
        self._client: redis.Redis | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            started = self.loop.step_started
            if started is not None and time.monotonic() - started > self.stall_seconds:
                die(f"no progress for {time.monotonic() - started:.0f}s while {self.loop.phase}")
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat: %s", exc)
                self._client = None

    def beat(self) -> None:
        if self._client is None:
            self._client = redis_client.client(self.loop.settings.redis_url, "worker")
        queue = EventQueue(self._client, self.loop.settings.queue_prefix, self.loop.settings.lease_seconds)
        in_hand = list(self.loop.in_hand)
        lost = queue.extend(in_hand)
        for batch_id in (b for b in lost if b in self.loop.in_hand):  # not merely acked meanwhile
            log.warning("lease of batch %s ended before it was stored; its items went to other workers", batch_id)
        WorkerStats(self._client, self.loop.settings.queue_prefix).beat(self.loop.name, {
            "last_progress": round(self.loop.last_progress, 3),
            "beat": round(time.time(), 3),
            "phase": self.loop.phase if self.loop.step_started is not None else "idle",
            "batch_in_hand": in_hand[0] if in_hand else None,
            "lease_deadline": round(time.time() + queue.lease_seconds, 3) if in_hand else None,
            "events_done": self.loop.events_done,
        })

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(redis.RedisError):
            if self._client is not None:
                WorkerStats(self._client, self.loop.settings.queue_prefix).forget(self.loop.name)
