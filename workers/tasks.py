"""Pushline's Celery tasks: one per batch, housekeeping for beat, maintenance on demand.

`PushlineTask` is the one base that owns what every task needs (pypi/warehouse's
WarehouseTask does the same): the process's consumer (Redis queue, PostgreSQL
connection, handler registry) made once per pool process, the lease keeper,
late acknowledgement, retries with backoff on transient failures, and the
figures. Time limits (below the lease) are set per task by workers.celery_app,
from the settings. Handlers stay plain functions that know nothing of Celery.
"""

from __future__ import annotations

import contextlib
import datetime as dt  # noqa: F401  (annotations)
import logging
import os
import threading

import redis
from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded

from pushline import redis_client
from pushline.config import Settings
from pushline.queue import Batch, EventQueue
from workers import housekeeping
from workers.consumer import Consumer, LeaseKeeper, Outcome, Transient
from workers.dispatch import done_key

log = logging.getLogger(__name__)

DONE_TTL = 600  # seconds a dispatcher's report list outlives its last report (a dispatcher that died)


class PushlineTask(Task):
    abstract = True
    acks_late = True  # a message is acknowledged after its task ran, not when a process took it
    reject_on_worker_lost = True  # a pool process killed mid-task: the message goes back
    autoretry_for = (Transient,)
    retry_backoff = 1  # seconds, doubled per retry
    retry_backoff_max = 15
    retry_jitter = True
    max_retries = None  # a database down for an hour is waited for; the lease is kept meanwhile
    ignore_result = True

    @property
    def settings(self) -> Settings:
        return self.app.conf.pushline_settings

    @property
    def consumer(self) -> Consumer:
        """One per pool process, or per thread of a threads pool (a PostgreSQL
        connection serves one thread); made where it is used, never inherited
        through fork."""
        local = _local
        if getattr(local, "pid", None) != os.getpid():
            from workers.handlers import registry_with_handlers

            node = getattr(self.request, "hostname", None) or "worker"
            local.consumer = Consumer(self.settings, registry_with_handlers(), name=node)
            local.keeper = LeaseKeeper(local.consumer)
            local.keeper.start()
            local.pid = os.getpid()
        return local.consumer

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Called in the worker's main process when the hard time limit ended the
        # pool process (Celery then acknowledges the message): the batch need not
        # wait for its lease to come back.
        if isinstance(exc, TimeLimitExceeded) and self.name == "pushline.store_batch" and len(args) == 3:
            _give_back_after_hard_limit(self.settings, args[0], args[2], task_id)


_local = threading.local()


def _report(consumer: Consumer, dispatcher: str, batch_id: str, outcome: str, events: int) -> None:
    """Tell the dispatcher that sent the batch how it went (it frees a place in flight)."""
    _report_to(consumer.queue, dispatcher, batch_id, outcome, events)


def _report_to(queue: EventQueue, dispatcher: str, batch_id: str, outcome: str, events: int) -> None:
    with contextlib.suppress(redis.RedisError):  # the dispatcher also reads the leases themselves
        pipe = queue.redis.pipeline(transaction=False)
        _report_into(pipe, queue.prefix, dispatcher, batch_id, outcome, events)
        pipe.execute()


def _report_into(pipe, prefix: str, dispatcher: str, batch_id: str, outcome: str, events: int) -> None:
    key = done_key(prefix, dispatcher)
    pipe.rpush(key, f"{batch_id}\t{outcome}\t{events}")
    pipe.expire(key, DONE_TTL)


@shared_task(bind=True, base=PushlineTask, name="pushline.store_batch")
def store_batch(self: PushlineTask, batch_id: str, kind: str, dispatcher: str) -> dict:
    """Process one claimed batch of the reliable queue, named by its id."""
    consumer = self.consumer
    owner = self.request.id or "eager"
    if (self.request.delivery_info or {}).get("redelivered"):
        return _after_worker_lost(consumer, dispatcher, batch_id, owner)
    batch = Batch(batch_id, [])  # its items come with its start (Consumer.process)

    def report(pipe, events: int) -> None:  # sent with the acknowledgement
        _report_into(pipe, consumer.queue.prefix, dispatcher, batch_id, Outcome.STORED, events)

    try:
        outcome = consumer.process(batch, kind, owner, report=report)
    except Transient as exc:
        # The batch stays ours: keep its lease beyond the retry's longest countdown.
        with contextlib.suppress(redis.RedisError):
            consumer.queue.extend([batch_id], extra_seconds=self.retry_backoff_max)
        _report(consumer, dispatcher, batch_id, "retry", 0)
        log.warning("batch %s: %s; retried (attempt %d)", batch_id, exc, self.request.retries + 1)
        raise
    if outcome == Outcome.LOST:
        log.info("batch %s: its lease was gone (already stored, or swept back to the queue) or another task"
                 " has it (a duplicated message); nothing to do", batch_id)
        with contextlib.suppress(redis.RedisError):
            consumer.stats.count("tasks_without_lease")
    if outcome != Outcome.STORED:
        _report(consumer, dispatcher, batch_id, outcome, 0)
    return {"outcome": outcome, "items": len(batch.items)}


def _after_worker_lost(consumer: Consumer, dispatcher: str, batch_id: str, owner: str) -> dict:
    """The message comes again because the pool process that had it ended (the
    hard time limit, the OOM killer...), perhaps in the middle of the batch. As
    the sweep does for a dead worker's batch: its items go to the suspects with
    a strike, to be tried one at a time, so that an event that kills every
    process it meets ends stored `rejected` instead of coming back forever."""
    try:
        ours = consumer.queue.start(batch_id, owner)
    except redis.RedisError:
        ours = False  # its lease returns it
    if ours:
        consumer.give_back(Batch(batch_id, []), strike=True)
        log.warning("batch %s: the pool process working on it ended; its items are retried one at a time",
                    batch_id)
    _report(consumer, dispatcher, batch_id, Outcome.GIVEN_BACK, 0)
    return {"outcome": Outcome.GIVEN_BACK if ours else Outcome.LOST, "items": 0}


def _give_back_after_hard_limit(settings: Settings, batch_id: str, dispatcher: str, owner: str) -> None:
    """Its items go to the suspects with a strike, as a dead worker's would."""
    client = redis_client.client(settings.redis_url, "worker")
    try:
        queue = EventQueue(client, settings.queue_prefix, settings.lease_seconds)
        if queue.start(batch_id, owner):
            queue.release(Batch(batch_id, []), strike=True)
            log.warning("batch %s: its task passed the hard time limit and lost its pool process; its items are"
                        " retried one at a time", batch_id)
        _report_to(queue, dispatcher, batch_id, Outcome.GIVEN_BACK, 0)
    except redis.RedisError as exc:
        log.warning("batch %s: not given back after the hard time limit (%s); its lease returns it", batch_id, exc)
    finally:
        client.close()


# -- housekeeping, scheduled by beat (workers.celery_app) ----------------------
@shared_task(bind=True, base=PushlineTask, name="pushline.sweep_leases", autoretry_for=())
def sweep_leases(self: PushlineTask) -> int:
    return housekeeping.sweep_leases(self.consumer.queue)


@shared_task(bind=True, base=PushlineTask, name="pushline.forward_spool", autoretry_for=())
def forward_spool(self: PushlineTask) -> int:
    consumer = self.consumer
    try:
        return housekeeping.forward_spool(consumer.conn, consumer.queue)
    except Exception:
        consumer.drop_connection()
        raise


@shared_task(bind=True, base=PushlineTask, name="pushline.roll_partitions", autoretry_for=())
def roll_partitions(self: PushlineTask) -> int | None:
    return housekeeping.roll_partitions(self.settings, self.consumer.queue)


@shared_task(bind=True, base=PushlineTask, name="pushline.apply_retention", autoretry_for=())
def apply_retention(self: PushlineTask, days: int | None = None) -> int | None:
    consumer = self.consumer
    try:
        return housekeeping.apply_retention(consumer.conn, days if days is not None else self.settings.retention_days,
                                            consumer.queue)
    except Exception:
        consumer.drop_connection()
        raise


# -- maintenance, sent by `pushline replay|prune --enqueue` --------------------
@shared_task(bind=True, base=PushlineTask, name="pushline.replay", autoretry_for=())
def replay(self: PushlineTask, statuses: list[str] | None = ("rejected", "unhandled"), names: list[str] | None = None,
           since: str | None = None, until: str | None = None, rebuild: bool = False) -> dict:
    from workers import maintenance

    return maintenance.replay_events(self.settings, statuses=statuses, names=names,
                                     since=_instant(since, self.settings), until=_instant(until, self.settings),
                                     rebuild=rebuild)


@shared_task(bind=True, base=PushlineTask, name="pushline.prune", autoretry_for=())
def prune(self: PushlineTask, before: str) -> dict:
    from workers import maintenance

    return maintenance.prune_events(self.settings, _instant(before, self.settings))


def _instant(text: str | None, settings: Settings) -> dt.datetime | None:
    """Naive times are in PUSH_TIMEZONE, as on the command line."""
    from workers.maintenance import when

    return when(text, settings) if text else None
