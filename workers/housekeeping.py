"""Periodic duties, run by Celery beat as tasks (workers.tasks) and, should beat
be gone for a while, by the workers' dispatchers themselves (workers.dispatch).

Each duty records when it last ran in Redis, so that `stats` and a dispatcher
can tell whether beat is doing its job.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import psycopg2
import redis

from pushline import partitions, spool
from pushline.config import Settings
from pushline.queue import EventQueue
from pushline.workerstats import WorkerStats
from workers.replay import prune

log = logging.getLogger(__name__)

SWEEP_EVERY = 5.0  # seconds between sweeps for the batches of dead workers (and lost task messages)
FORWARD_EVERY = 1.0  # seconds between looks at the fallback spool
PARTITIONS_EVERY = 600.0  # seconds between checks that the next months have partitions
RETENTION_EVERY = 3600.0  # seconds between retention runs (when PUSHLINE_RETENTION_DAYS is set)
# A dispatcher does a duty itself when nobody did it for this many of its periods.
OVERDUE_PERIODS = 6


def _mark(queue: EventQueue, duty: str) -> None:
    WorkerStats(queue.redis, queue.prefix).mark_duty(duty)


def last_runs(queue: EventQueue) -> dict[str, float]:
    return WorkerStats(queue.redis, queue.prefix).duties()


def sweep_leases(queue: EventQueue) -> int:
    """Return the items of expired leases to the queue (or the suspects)."""
    moved = queue.reclaim()
    if moved:
        log.warning("returned %d events of expired leases to the queue", moved)
        WorkerStats(queue.redis, queue.prefix).count("reclaimed", moved)
    _mark(queue, "sweep_leases")
    return moved


def forward_spool(conn, queue: EventQueue) -> int:
    """Move the events the web tier spooled while Redis was unreachable to the queue."""
    total = 0
    try:
        while forwarded := spool.forward(conn, queue):
            log.info("forwarded %d spooled events to the queue", forwarded)
            total += forwarded
    except redis.ResponseError as exc:
        # Redis refuses writes (maxmemory): the spool keeps its events (the
        # forward's transaction rolled back) while batches drain.
        log.warning("spool not forwarded, Redis refuses it: %s", exc)
        return total
    _mark(queue, "forward_spool")
    return total


def roll_partitions(settings: Settings, queue: EventQueue) -> int | None:
    try:
        made = partitions.roll(settings.database_url)
    except psycopg2.Error as exc:
        log.warning("partitions not rolled forward (retried later): %s", exc)
        return None
    _mark(queue, "roll_partitions")
    return made


def apply_retention(conn, days: int, queue: EventQueue) -> int | None:
    """Delete the events older than `days` (PUSHLINE_RETENTION_DAYS; 0: off)."""
    if not days:
        return None
    cut = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    deleted = prune(conn, cut)
    log.info("retention: deleted %d events created before %s", deleted, cut.isoformat())
    _mark(queue, "apply_retention")
    return deleted


DUTIES = {"sweep_leases": SWEEP_EVERY, "forward_spool": FORWARD_EVERY, "roll_partitions": PARTITIONS_EVERY}


def overdue(queue: EventQueue, since: float, now: float | None = None) -> list[str]:
    """The duties nobody ran for OVERDUE_PERIODS of their period (beat is down).
    A duty never run counts from `since` (the caller's start): beat starting a
    moment after the workers is not a missing beat."""
    now = time.time() if now is None else now
    runs = last_runs(queue)
    return [duty for duty, every in DUTIES.items() if now - max(runs.get(duty, 0.0), since) > OVERDUE_PERIODS * every]
