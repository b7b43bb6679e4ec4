"""One batch of the reliable queue, from its lease to its acknowledgement.

A `Consumer` owns what processing a batch needs in one process: the Redis
queue, a PostgreSQL connection (made lazily, dropped on failure) and the
counters. `process` runs one claimed batch: it marks the batch started (only
while its lease is still ours), writes it in one transaction through
workers.batch (which isolates what is the data's fault), acknowledges it, and
records the figures. In production the dispatcher claims (workers.dispatch)
and a Celery task processes (workers.tasks); `step` does both in place, for
tests and for the dispatcher's fallback when no task can be sent.

A `LeaseKeeper` thread extends the leases of the batches in hand every
quarter lease, so that a slow batch is never taken for a dead worker's
(dramatiq's heartbeats do the same); a process that is really gone, or
paused, stops extending and loses them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import psycopg2
import redis
from celery.exceptions import SoftTimeLimitExceeded

from pushline import redis_client
from pushline.config import Settings
from pushline.db import connect, is_transient
from pushline.pgcopy import StagingLost, prepare_staging
from pushline.queue import STRIKE_LIMIT, Batch, EventQueue
from pushline.workerstats import WorkerStats
from workers.batch import process_items
from workers.registry import Registry

log = logging.getLogger(__name__)

STRUCK_REASON = (f"worker: {STRIKE_LIMIT} workers died or failed while processing this event; stored unprocessed"
                 " (replay it once the cause is fixed)")

# What a batch is: a plain claim, one suspect item (processed alone), or one
# struck item (stored rejected without running its handler).
BATCH, SUSPECT, STRUCK = "batch", "suspect", "struck"


class Transient(Exception):
    """Redis or PostgreSQL failed in a way that passes (down, restarting, a
    deadlock): the batch is still ours and is tried again later."""


class Outcome:
    STORED, LOST, GIVEN_BACK = "stored", "lease lost", "given back"


class Consumer:
    def __init__(self, settings: Settings, registry: Registry, name: str = "worker"):
        self.settings = settings
        self.registry = registry
        self.name = name
        self.counts: Counter = Counter()
        self._conn = None
        self._queue: EventQueue | None = None
        self.in_hand: dict[str, float] = {}  # batch id -> when its work began (unix time)
        self.staging_per_session = True  # staging tables made once per session (pushline.pgcopy)
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
        self.drop_connection()
        if self._queue is not None:
            self._queue.redis.close()
            self._queue = None

    def drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to release
                self._conn.close()
        self._conn = None

    # -- claiming ----------------------------------------------------------
    def claim(self, block_seconds: float = redis_client.BLOCK_SECONDS,
              with_items: bool = True) -> tuple[Batch, str] | None:
        """The next batch under a fresh lease: first a struck or suspect item
        (one at a time), else up to PUSHLINE_BATCH_SIZE events of the queue
        (without its items when the caller only hands the batch over by id)."""
        one = self.queue.claim_one(self.queue.struck, self.queue.suspect)
        if one is not None:
            source, batch = one
            return batch, STRUCK if source == self.queue.struck else SUSPECT
        batch = self.queue.claim(self.settings.batch_size, block_seconds=block_seconds,
                                 wait_seconds=self.settings.batch_wait_ms / 1000, with_items=with_items)
        return (batch, BATCH) if batch is not None else None

    def step(self, block_seconds: float = redis_client.BLOCK_SECONDS) -> int:
        """Claim and process one batch in place; returns the number of items handled.
        On a transient failure the batch goes back to the queue at once."""
        claimed = self.claim(block_seconds)
        if claimed is None:
            return 0
        batch, kind = claimed
        try:
            self.process(batch, kind)
        except Transient:
            self.give_back(batch, strike=False)
            raise
        return len(batch.items)

    # -- processing ----------------------------------------------------------
    def process(self, batch: Batch, kind: str = BATCH, owner: str = "in place",
                report: Callable[[redis.client.Pipeline, int], None] | None = None) -> str:
        """Write a claimed batch and acknowledge it, as `owner` (a task's id).
        A batch claimed without its items (a task has only its id) gets them
        here, in the same round trip that begins it. `report` adds commands to
        the acknowledgement's round trip once the batch is stored (the task's
        report to its dispatcher). Raises Transient (the batch stays ours,
        under its lease, for a retry); everything else is handled."""
        try:
            if batch.items:
                ours = self.queue.start(batch.id, owner)
            else:
                items = self.queue.start_with_items(batch.id, owner)
                ours = items is not None
                if ours:
                    batch.items, batch.size = items, -1
            if not ours:
                return Outcome.LOST
        except redis.RedisError as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        self.in_hand[batch.id] = time.time()
        try:
            conn = self.conn
            if self.staging_per_session and not conn.staging_made:
                self._prepare_staging(conn)
            result = process_items(conn, batch.items, self.registry, self.settings.tzinfo,
                                   self.settings.max_custom_data_keys,
                                   reject=STRUCK_REASON if kind == STRUCK else None)
        except (psycopg2.errors.QueryCanceled, SoftTimeLimitExceeded) as exc:
            # A statement or the task ran out of time: a hung server, or one item
            # that makes the work slow. A batch goes to the suspects, one at a time;
            # a single item that times out alone gets a strike, so the second kind
            # cannot stall us.
            log.warning("batch %s ran out of time (%s); its items are retried one at a time",
                        batch.id, type(exc).__name__)
            self.drop_connection()
            self.give_back(batch, strike=len(batch.items) == 1, suspect=True)
            return Outcome.GIVEN_BACK
        except (redis.RedisError, psycopg2.Error) as exc:
            if isinstance(exc, StagingLost) and self.staging_per_session:
                log.warning("this session's staging tables vanished between transactions (a pooler in"
                            " transaction mode?); they are made in each batch's transaction from now on")
                self.staging_per_session = False
            if isinstance(exc, redis.RedisError) or is_transient(exc):
                if isinstance(exc, psycopg2.Error):
                    self.drop_connection()
                raise Transient(f"{type(exc).__name__}: {exc}") from exc
            log.error("batch failed in an unexpected way; its items are retried one at a time", exc_info=True)
            self.drop_connection()  # whatever state the session is in, the next batch starts afresh
            self.give_back(batch, strike=True)
            return Outcome.GIVEN_BACK
        except Exception:
            # Not the database's fault and not isolated by process_items: an item
            # we cannot classify. One at a time with strikes, it ends stored rejected.
            log.error("batch failed in an unexpected way; its items are retried one at a time", exc_info=True)
            self.give_back(batch, strike=True)
            return Outcome.GIVEN_BACK
        finally:
            self.in_hand.pop(batch.id, None)
        lag = (dt.datetime.now(dt.UTC) - result.oldest_receipt).total_seconds() if result.oldest_receipt else 0.0

        def then(pipe) -> None:
            # The figures (and the report) ride on the acknowledgement's round trip.
            self.stats.record_batch(self.name, result.counts, len(batch.items), lag, pipe=pipe)
            if report is not None:
                report(pipe, len(batch.items))

        try:
            acked = self.queue.ack(batch, suspect=kind != BATCH, dead=result.dead, then=then)
        except redis.RedisError as exc:
            # Stored, not acknowledged: a retry finds the events already there (no-ops).
            raise Transient(f"{type(exc).__name__}: {exc}") from exc
        if not acked:
            log.warning("batch %s was stored after its lease had ended; another worker had it too (no effect)",
                        batch.id)
        if result.dead:
            log.error("%d items could not be stored and were parked as dead letters", len(result.dead))
        self.counts.update(result.counts)
        self.events_done += len(batch.items)
        return Outcome.STORED

    def _prepare_staging(self, conn) -> None:
        """Staging tables once a session, as the role it works as (before its first batch).
        A session that cannot make them for good (a read-only standby, a role without
        TEMP) is no event's fault: batches then make them in their own transaction."""
        try:
            prepare_staging(conn)
        except psycopg2.Error as exc:
            if is_transient(exc):
                raise
            log.warning("staging tables cannot be made once for the session (%s: %s); each batch makes them",
                        type(exc).__name__, str(exc).strip())
            self.staging_per_session = False

    def give_back(self, batch: Batch, strike: bool, suspect: bool = False) -> None:
        """Hand the batch back now rather than after its lease expires."""
        try:
            self.queue.release(batch, strike=strike, suspect=suspect or strike)
        except redis.RedisError:
            log.warning("could not release batch %s; its lease will return it", batch.id)


class LeaseKeeper(threading.Thread):
    """Extends the leases of the batches a consumer has in hand, every quarter lease."""

    def __init__(self, consumer: Consumer):
        super().__init__(name="pushline-lease-keeper", daemon=True)
        self.consumer = consumer
        self.every = max(1.0, min(5.0, consumer.settings.lease_seconds / 4))
        self.stopping = threading.Event()
        self._client: redis.Redis | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.extend()
            except redis.RedisError as exc:
                log.warning("lease keeper: %s", exc)
                self._client = None

    def extend(self) -> None:
        in_hand = list(self.consumer.in_hand)
        if not in_hand:
            return
        if self._client is None:
            self._client = redis_client.client(self.consumer.settings.redis_url, "worker")
        queue = EventQueue(self._client, self.consumer.settings.queue_prefix, self.consumer.settings.lease_seconds)
        for batch_id in queue.extend(in_hand):
            if batch_id in self.consumer.in_hand:  # not merely acked meanwhile
                log.warning("lease of batch %s ended before it was stored; its items went to other workers", batch_id)

    def stop(self) -> None:
        self.stopping.set()
