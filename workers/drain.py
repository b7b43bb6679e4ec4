"""The worker's consumer: claim a batch, store it, acknowledge it; forever.

Runs inside the Celery worker (see workers.celery_app). Events are not Celery
messages: one message per event costs more than the event's own work, and
kombu's Redis transport can lose a message taken by BRPOP before it is
recorded as unacked. Instead each loop claims up to PUSHLINE_BATCH_SIZE events
from the reliable queue (pushline.queue) and writes them in one transaction.

This class owns the plumbing, so handlers stay plain functions: the database
connection, the transaction, retries with backoff, lease upkeep and counters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import threading
import time
from collections import Counter

import redis

from pushline import spool
from pushline.config import Settings
from pushline.db import TRANSIENT_ERRORS, connect
from pushline.queue import STRIKE_LIMIT, Batch, EventQueue
from pushline.workerstats import WorkerStats
from workers.batch import process_items
from workers.registry import Registry

log = logging.getLogger(__name__)

RECLAIM_EVERY = 5.0  # seconds between sweeps for batches of dead workers
FORWARD_EVERY = 1.0  # seconds between looks at the fallback spool
DEAD_LETTER_REASON = (f"worker: {STRIKE_LIMIT} workers died while processing this event; stored unprocessed"
                      " (replay it once the cause is fixed)")
MAX_BACKOFF = 15.0


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

    # -- resources, made lazily and dropped on failure -------------------
    @property
    def queue(self) -> EventQueue:
        if self._queue is None:
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10, socket_connect_timeout=2)
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
            except (redis.RedisError, *TRANSIENT_ERRORS) as exc:
                failures += 1
                with contextlib.suppress(redis.RedisError):
                    self.stats.count("retries")
                delay = min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 6))
                log.warning("transient failure, retrying in %.1fs: %s: %s", delay, type(exc).__name__, exc)
                if isinstance(exc, TRANSIENT_ERRORS):
                    self._drop_connection()
                self.stopping.wait(delay)
        self.close()
        log.info("drain loop stopped", extra={"worker": self.name})

    def stop(self) -> None:
        self.stopping.set()

    def step(self, block_seconds: float = 1.0) -> int:
        """Claim and store one batch; returns the number of items handled."""
        now = time.monotonic()
        if now >= self._next_forward:
            self._next_forward = now + FORWARD_EVERY
            while forwarded := spool.forward(self.conn, self.queue):
                log.info("forwarded %d spooled events to the queue", forwarded)
        if now >= self._next_reclaim:
            self._next_reclaim = now + RECLAIM_EVERY
            moved = self.queue.reclaim()
            if moved:
                log.warning("returned %d events of expired leases to the queue", moved)
                self.stats.count("reclaimed", moved)
        # Events a dead worker held: those that outlived too many workers are
        # stored as rejected unprocessed; the others are processed one at a time.
        dead = self.queue.claim_one(self.queue.deadletter)
        if dead is not None:
            self.store(dead, reject=DEAD_LETTER_REASON)
            return 1
        suspect = self.queue.claim_one(self.queue.suspect)
        if suspect is not None:
            self.store(suspect, suspect=True)
            return 1
        batch = self.queue.claim(self.settings.batch_size, block_seconds=block_seconds,
                                 wait_seconds=self.settings.batch_wait_ms / 1000)
        if batch is None:
            return 0
        self.store(batch)
        return len(batch.items)

    def store(self, batch: Batch, suspect: bool = False, reject: str | None = None) -> None:
        try:
            result = process_items(self.conn, batch.items, self.registry, self.settings.tzinfo,
                                   self.settings.max_custom_data_keys, reject=reject)
        except BaseException:
            # Hand the batch back at once rather than after its lease expires.
            try:
                self.queue.release(batch)
            except redis.RedisError:
                log.warning("could not release batch %s; its lease will return it", batch.id)
            raise
        self.queue.ack(batch, suspect=suspect)
        self.counts.update(result.counts)
        lag = (dt.datetime.now(dt.UTC) - result.oldest_receipt).total_seconds() if result.oldest_receipt else 0.0
        try:
            self.stats.record_batch(self.name, result.counts, len(batch.items), lag)
        except redis.RedisError:  # figures only; the batch itself is safely stored
            log.warning("could not record worker metrics")
