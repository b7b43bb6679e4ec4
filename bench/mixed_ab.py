"""The mixed stream against the Push API alone, in alternating drains.

    python -m bench.mixed_ab [--events 50000] [--rounds 3] [--workers 2]

Each round drains --events Push API bodies, then as many of the mixed stream
(half webhooks, as `make bench` builds it), with --workers workers of one pool
process each, and prints both rates and their ratio (goal >= 0.85); for each
drain, the CPU time per event of the workers' processes and of their
PostgreSQL backends (a shared machine's speed drifts, CPU per event much
less), what the workers' batch sessions waited on (pg_stat_activity sampled
every 10 ms: the share of samples per wait event, `active` meaning on CPU,
`idle in transaction` the worker's own Python inside a batch), and the
deadlocks and transient retries the workers logged. Only the ratios of the
same round compare.

Its own database (pushline_bench_mixed) and queue prefix, so that it can run
beside `make bench`.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time

import psycopg2

import bench.run as run
from bench.hotspots import TICKS, cpu_seconds
from bench.run import LOGS, Bench
from bench.webhooks import mixed_bodies, webhook_bodies

run.PREFIX = "pushline-bench-mixed"  # Bench.drain and prefill read the module's name


class MixedBench(Bench):
    database = "pushline_bench_mixed"

    def __init__(self, args):
        super().__init__(args)
        with self.db.cursor() as cur:  # tables bench.run does not know of yet (a later migration's)
            cur.execute("SELECT to_regclass('webhook_event_ids') IS NOT NULL")
            if cur.fetchone()[0] and "webhook_event_ids" not in self.tables:
                self.tables.append("webhook_event_ids")

    def clear_redis(self):
        for key in self.redis.scan_iter(f"{run.PREFIX}:*", count=1000):
            self.redis.delete(key)


class WaitSampler:
    """Samples the wait events of the bench database's worker sessions."""

    def __init__(self, database_url: str, database: str):
        self.url, self.database = database_url, database
        self.counts: collections.Counter = collections.Counter()
        self.samples = 0

    def start(self, procs) -> None:
        self.stop_flag = threading.Event()
        self.counts.clear()
        self.samples = 0
        self.pids = [pid for p in procs for pid in p.pids()]
        self.cpu0 = self._cpu()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self, procs) -> None:
        cpu = self._cpu()
        # Backends connected during the drain started from nothing.
        self.cpu = {k: v - self.cpu0.get(k, 0.0) for k, v in cpu.items() if not isinstance(k, int)}
        self.cpu["postgres"] = sum(v - self.cpu0.get(k, 0.0) for k, v in cpu.items() if isinstance(k, int))
        self.stop_flag.set()
        self.thread.join()

    def _cpu(self) -> dict:
        """CPU seconds of the workers' processes, of each PostgreSQL backend of the
        database (by pid), and the machine's steal time (another guest on the host)."""
        with psycopg2.connect(self.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                        (self.database,))
            backends = [pid for (pid,) in cur.fetchall()]
        conn.close()
        with open("/proc/stat") as stat:
            steal = int(stat.readline().split()[8]) / TICKS
        return {"workers": sum(cpu_seconds(pid) for pid in self.pids), "steal": steal,
                **{pid: cpu_seconds(pid) for pid in backends}}

    def _run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop_flag.is_set():
                cur.execute("""SELECT state, coalesce(wait_event_type || ':' || wait_event, '')
                               FROM pg_stat_activity
                               WHERE datname = %s AND pid <> pg_backend_pid()
                                 AND application_name LIKE 'pushline-worker %%'""", (self.database,))
                for state, wait in cur.fetchall():
                    if state == "active":
                        self.counts[wait or "active"] += 1
                    elif state == "idle in transaction":
                        self.counts["idle in transaction (client busy)"] += 1
                    else:
                        self.counts["idle"] += 1
                self.samples += 1
                time.sleep(0.01)
        conn.close()

    def summary(self, events: int) -> str:
        total = sum(self.counts.values()) or 1
        cpu = ", ".join(f"{k} {1e6 * v / events:.0f}" for k, v in self.cpu.items())
        return (f"CPU us/event: {cpu}; waits: "
                + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in self.counts.most_common(6)))


def log_counts(label: str, workers: int) -> dict[str, int]:
    found = collections.Counter()
    for i in range(workers):
        text = (LOGS / f"worker-{label}-{i}.log").read_text(errors="replace")
        found["deadlock"] += text.count("deadlock detected")
        found["retry"] += text.count("transient")
    return dict(found)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    push = Bench.bodies(args.events)
    mixed = mixed_bodies(Bench.bodies(args.events - args.events // 2), webhook_bodies(args.events // 2))
    bench = MixedBench(args)
    sampler = WaitSampler(bench.database_url, bench.database)
    ratios = []
    try:
        for index in range(args.rounds):
            rates = {}
            for label, bodies, check in (("abpush", push, False), ("abmixed", mixed, True)):
                result = bench.drain(label, bodies, args.workers, all_processed=check, observer=sampler)
                rates[label] = result["events_per_s"]
                print(f"round {index + 1} {label}: {result['events_per_s']} ev/s ({result['seconds']} s); "
                      f"{sampler.summary(len(bodies))}; logs: {log_counts(label, args.workers)}", flush=True)
            ratios.append(rates["abmixed"] / rates["abpush"])
            print(f"round {index + 1}: mixed/push {ratios[-1]:.3f}", flush=True)
    finally:
        bench.close()
    print(f"ratios: {' '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f} (goal >= "
          f"{run.MIXED_RATIO_GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
