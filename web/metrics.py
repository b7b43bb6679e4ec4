"""GET /metrics: Prometheus text format.

Web figures are prometheus_client metrics; under gunicorn they are shared by
the worker processes through its multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
set up in gunicorn.conf.py). Queue depth and the workers' figures are read at
scrape time from Redis. No label ever holds a token: only source names.
"""

from __future__ import annotations

import os

import psycopg2
import redis
from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pushline.pending import SPOOL_OLDEST, oldest_pending_seconds
from pushline.workerstats import WorkerStats
from web import services

bp = Blueprint("metrics", __name__)

PUSHES = Counter("pushline_pushes", "Pushes answered, by HTTP status and source", ["status", "source"])
ENQUEUE = Histogram("pushline_enqueue_seconds", "Time to store an accepted push (Redis, or the fallback)",
                    ["store"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5))
FALLBACK = Gauge("pushline_fallback_active", "1 while this process stores pushes in the PostgreSQL spool",
                 multiprocess_mode="max")


# The ack path touches these on every push: resolve labels once, and write the
# gauge only when it changes (each write is an mmap write in multiprocess mode).
ENQUEUE_REDIS = ENQUEUE.labels("redis")
ENQUEUE_SPOOL = ENQUEUE.labels("spool")
_push_children: dict[tuple[int, str], object] = {}
_fallback = {"active": None}


def count_push(status: int, source: str) -> None:
    child = _push_children.get((status, source))
    if child is None:
        child = _push_children[status, source] = PUSHES.labels(str(status), source)
    child.inc()


def fallback_in_use(active: bool) -> None:
    if _fallback["active"] is not active:
        FALLBACK.set(1 if active else 0)
        _fallback["active"] = active


class ScrapeTimeCollector:
    """Figures read from Redis when /metrics is scraped."""

    def collect(self):
        try:
            spool_oldest = services.cached("spool_oldest", lambda: services.status_query(SPOOL_OLDEST)[0][0])
        except psycopg2.Error:
            spool_oldest = None
        try:
            queue = services.queue()
            depth, claimed = queue.depth(), queue.claimed()
            workers = WorkerStats(queue.redis, services.settings().queue_prefix)
            stats = workers.read()
            states = workers.drain_states()
            oldest = oldest_pending_seconds(queue, spool_oldest)
            dead = queue.dead_letter_count()
        except redis.RedisError:
            up = GaugeMetricFamily("pushline_redis_up", "Whether Redis answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("pushline_redis_up", "Whether Redis answered this scrape")
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("pushline_queue_depth", "Events waiting in the queue")
        g.add_metric([], depth)
        yield g
        g = GaugeMetricFamily("pushline_queue_claimed_batches", "Batches claimed by workers, not yet acknowledged")
        g.add_metric([], claimed)
        yield g
        g = GaugeMetricFamily("pushline_oldest_pending_seconds",
                              "Age of the oldest accepted event not yet stored (queue, batches, spool, dead letters)")
        g.add_metric([], oldest)
        yield g
        g = GaugeMetricFamily("pushline_dead_letters", "Accepted items that could not be stored at all (replay them)")
        g.add_metric([], dead)
        yield g
        g = GaugeMetricFamily("pushline_worker_last_progress_timestamp_seconds",
                              "Unix time each worker last stored a batch or found nothing to do", labels=["worker"])
        for worker, state in sorted(states.items()):
            g.add_metric([worker], float(state.get("last_progress", 0)))
        yield g
        g = GaugeMetricFamily("pushline_worker_heartbeat_timestamp_seconds",
                              "Unix time of each worker's last heartbeat", labels=["worker"])
        for worker, state in sorted(states.items()):
            g.add_metric([worker], float(state.get("beat", 0)))
        yield g
        c = CounterMetricFamily("pushline_worker_events", "Distinct events stored by workers, by name and status",
                                labels=["name", "status"])
        for (name, status), n in sorted(stats["events"].items()):
            c.add_metric([name, status], n)
        yield c
        for counter, help_text in (("batches", "Batches stored by workers"),
                                   ("batch_items", "Queue items in stored batches"),
                                   ("retries", "Transient failures (database or Redis) that workers retried"),
                                   ("reclaimed", "Events returned to the queue from expired leases")):
            c = CounterMetricFamily(f"pushline_worker_{counter}", help_text)
            c.add_metric([], stats["counters"].get(counter, 0))
            yield c
        g = GaugeMetricFamily("pushline_worker_lag_seconds",
                              "Receipt-to-commit time of the oldest event in each worker's last batch",
                              labels=["worker"])
        for worker, lag in sorted(stats["lag"].items()):
            g.add_metric([worker], lag)
        yield g


@bp.get("/metrics")
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (PUSHES, ENQUEUE, FALLBACK):
            registry.register(collector)
    registry.register(ScrapeTimeCollector())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


__all__ = ["bp", "PUSHES", "ENQUEUE", "FALLBACK", "REGISTRY", "count_push", "fallback_in_use"]
