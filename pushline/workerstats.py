"""Worker figures kept in Redis, so that one scrape of the web tier's
/metrics shows every worker, wherever it runs.

Counters are Redis hashes incremented once per batch (never per event);
each worker's lag is a field refreshed after each batch.
"""

from __future__ import annotations

import time
from collections import Counter

import redis

STALE_AFTER = 120.0  # seconds without a batch before a worker's lag is no longer reported


class WorkerStats:
    def __init__(self, client: redis.Redis, prefix: str):
        self.redis = client
        self.events = f"{prefix}:metrics:events"  # "name\tstatus" -> count
        self.counters = f"{prefix}:metrics:counters"  # batches, batch_items, retries, reclaimed
        self.lag = f"{prefix}:metrics:lag"  # worker -> "lag_seconds\tunix_time"

    def record_batch(self, worker: str, by_name_status: Counter, items: int, lag_seconds: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for (name, status), n in by_name_status.items():
            pipe.hincrby(self.events, f"{name}\t{status}", n)
        pipe.hincrby(self.counters, "batches", 1)
        pipe.hincrby(self.counters, "batch_items", items)
        pipe.hset(self.lag, worker, f"{lag_seconds:.6f}\t{time.time():.3f}")
        pipe.execute()

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
