"""Worker figures kept in Redis, so that one scrape of the web tier's
/metrics shows every worker, wherever it runs.

Counters are Redis hashes incremented once per batch (never per event);
each worker's lag is a field refreshed after each batch.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import redis

STALE_AFTER = 120.0  # seconds without a batch before a worker's lag is no longer reported
GONE_AFTER = 600.0  # seconds without a heartbeat before a worker is forgotten (it died; its node name was its pid)


class WorkerStats:
    def __init__(self, client: redis.Redis, prefix: str):
        self.redis = client
        self.events = f"{prefix}:metrics:events"  # "name\tstatus" -> count
        self.counters = f"{prefix}:metrics:counters"  # batches, batch_items, retries, reclaimed
        self.lag = f"{prefix}:metrics:lag"  # worker -> "lag_seconds\tunix_time"
        self.workers = f"{prefix}:metrics:workers"  # worker -> JSON drain state, refreshed by its heartbeat
        self.housekeeping = f"{prefix}:housekeeping"  # duty -> unix time it last ran (beat's tasks)

    def record_batch(self, worker: str, by_name_status: Counter, items: int, lag_seconds: float,
                     pipe: redis.client.Pipeline | None = None) -> None:
        """Count a stored batch; into `pipe` when given (sent by its owner), else at once."""
        own = pipe is None
        if own:
            pipe = self.redis.pipeline(transaction=False)
        for (name, status), n in by_name_status.items():
            pipe.hincrby(self.events, f"{name}\t{status}", n)
        pipe.hincrby(self.counters, "batches", 1)
        pipe.hincrby(self.counters, "batch_items", items)
        pipe.hset(self.lag, worker, f"{lag_seconds:.6f}\t{time.time():.3f}")
        if own:
            pipe.execute()

    def beat(self, worker: str, state: dict) -> None:
        """The drain state a worker's heartbeat publishes: last progress, batch in hand..."""
        self.redis.hset(self.workers, worker, json.dumps(state))

    def forget(self, worker: str) -> None:
        """A worker that stops cleanly leaves no entry that would look stalled."""
        self.redis.hdel(self.workers, worker)

    def drain_states(self) -> dict[str, dict]:
        """Every worker's last published state; entries whose heartbeat stopped
        long ago (a worker gone for good) are dropped here and from Redis."""
        now = time.time()
        out = {}
        for worker, raw in self.redis.hgetall(self.workers).items():
            try:
                state = json.loads(raw)
            except ValueError:
                continue
            if now - float(state.get("beat", 0)) > GONE_AFTER:
                self.redis.hdel(self.workers, worker)
                continue
            out[worker.decode()] = state
        return out

    def mark_duty(self, duty: str) -> None:
        self.redis.hset(self.housekeeping, duty, f"{time.time():.3f}")

    def duties(self) -> dict[str, float]:
        """When each housekeeping duty last ran (unix time): shows whether beat does its job."""
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self.housekeeping).items()}

    def count(self, counter: str, n: int = 1) -> None:
        self.redis.hincrby(self.counters, counter, n)

    def read(self) -> dict:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.events)
        pipe.hgetall(self.counters)
        pipe.hgetall(self.lag)
        events, counters, lags = pipe.execute()
        now = time.time()
        fresh_lags = {}
        for worker, value in lags.items():
            lag, at = value.decode().split("\t")
            if now - float(at) < STALE_AFTER:
                fresh_lags[worker.decode()] = float(lag)
        return {
            "events": {tuple(k.decode().split("\t")): int(v) for k, v in events.items()},
            "counters": {k.decode(): int(v) for k, v in counters.items()},
            "lag": fresh_lags,
        }
