"""The time a batch spends on each SQL statement, and in Python around them.

    python -m bench.statements [--stream push|mixed|webhooks] [--events 20000]

Batches of PUSHLINE_BATCH_SIZE queue items (the drain's bodies, in queue order)
go one after the other through the workers' own batch code
(workers.batch.process_items: intake, one transaction, the handlers) in this
process, on one connection whose cursors time every execute and COPY: per
statement the calls and milliseconds per batch (the round trip: the server's
work and the wait for it), the commit, and the Python time that is left. One
process, no Celery and no second worker: a breakdown of a batch's own work, not
a throughput figure (bench/run.py measures those).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
import uuid

import psycopg2
import psycopg2.extensions

from bench.hotspots import cpu_seconds
from bench.run import LOGS, Bench
from bench.webhooks import mixed_bodies, webhook_bodies
from pushline.config import Settings
from pushline.db import _KEEPALIVES, WORKER
from pushline.envelope import Envelope


class StatementsBench(Bench):
    # Its own database, so that it can run beside `make bench` (PUSHLINE_BENCH_DATABASE:
    # another, for two trees measured side by side).
    database = os.environ.get("PUSHLINE_BENCH_DATABASE", "pushline_bench_statements")

    def clear_redis(self):
        pass  # no queue here: another bench's keys are not ours to clear


TIMES: collections.Counter = collections.Counter()
CALLS: collections.Counter = collections.Counter()


def statement_name(sql) -> str:
    text = sql.decode() if isinstance(sql, bytes) else str(sql)
    if text.lstrip().upper().startswith("COPY"):
        return " ".join(text.split()[:2])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    first = " ".join(lines[:2]) if lines and lines[0].upper().startswith("WITH") else (lines[0] if lines else "")
    return re.sub(r"\s+", " ", first)[:90]


class TimedCursor(psycopg2.extensions.cursor):
    def execute(self, sql, args=None):
        started = time.perf_counter()
        try:
            return super().execute(sql, args)
        finally:
            name = statement_name(sql)
            TIMES[name] += time.perf_counter() - started
            CALLS[name] += 1

    def copy_expert(self, sql, file, size=8192):
        started = time.perf_counter()
        try:
            return super().copy_expert(sql, file, size)
        finally:
            name = statement_name(sql)
            TIMES[name] += time.perf_counter() - started
            CALLS[name] += 1


class TimedConnection(psycopg2.extensions.connection):
    def commit(self):
        started = time.perf_counter()
        try:
            return super().commit()
        finally:
            TIMES["COMMIT"] += time.perf_counter() - started
            CALLS["COMMIT"] += 1


def explain_batch(conn, items: list[bytes], registry, settings, ms: float) -> None:
    """The last batch's items again (as retries: new receipts of stored events) would
    explain the wrong statements; so the same bodies as new events, under new ids."""
    from workers.batch import process_items

    fresh = []
    for raw in items:
        envelope = Envelope.decode(raw)
        body = json.loads(envelope.body)
        if isinstance(body.get("eventId"), str):
            body["eventId"] = str(uuid.uuid4())
        else:
            body.setdefault("parameters", {})["explained"] = True  # another content, another key
        fresh.append(Envelope(uuid.uuid4().hex, "default", envelope.received_at, json.dumps(body).encode()).encode())
    conn.notices = collections.deque(maxlen=1000)
    with conn.cursor() as cur:
        cur.execute("LOAD 'auto_explain'")
        cur.execute(f"SET auto_explain.log_min_duration = {float(ms)}; SET auto_explain.log_analyze = on; "
                    "SET auto_explain.log_buffers = on; SET auto_explain.log_level = warning; "
                    "SET auto_explain.log_nested_statements = on")
    conn.commit()
    process_items(conn, fresh, registry, settings.tzinfo, settings.max_custom_data_keys)
    for notice in conn.notices:
        for line in notice.rstrip().splitlines():
            print(line if len(line) < 240 else line[:240] + " ...")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", choices=["push", "mixed", "webhooks"], default="mixed")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--explain", type=float, metavar="MS",
                        help="after the timed batches, one more batch of the same stream (later events) with the plan "
                             "(auto_explain: ANALYZE, BUFFERS) of every statement slower than MS printed")
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    half = args.events // 2
    bodies = {"push": lambda: Bench.bodies(args.events), "webhooks": lambda: webhook_bodies(args.events),
              "mixed": lambda: mixed_bodies(Bench.bodies(args.events - half), webhook_bodies(half))}[args.stream]()
    bench = StatementsBench(args)
    try:
        bench.truncate()
        from workers.batch import process_items
        from workers.handlers import registry_with_handlers

        settings = Settings.from_env()
        registry = registry_with_handlers()
        conn = psycopg2.connect(bench.database_url, connection_factory=TimedConnection, cursor_factory=TimedCursor,
                                application_name="pushline-bench-statements", options=WORKER.options(),
                                **_KEEPALIVES)
        now = time.time()
        items = [Envelope(uuid.uuid4().hex, "default", now, body).encode() for body in bodies]
        size = settings.batch_size
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        conn.commit()
        started, cpu_started, backend_started = time.perf_counter(), time.process_time(), cpu_seconds(backend)
        for batch in batches:
            result = process_items(conn, batch, registry, settings.tzinfo, settings.max_custom_data_keys)
            if result.dead:
                raise RuntimeError(f"dead letters: {result.dead[:1]}")
        total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        backend_cpu = cpu_seconds(backend) - backend_started
        if args.explain is not None:
            explain_batch(conn, items[-size:], registry, settings, args.explain)
        conn.close()
        by_status = bench.count_by_status()
    finally:
        bench.close()
    sql = sum(TIMES.values())
    n = len(batches)
    print(f"{args.stream}: {len(items):,} events in {n} batches of {size}: {1000 * total / n:.1f} ms a batch "
          f"({len(items) / total:,.0f} ev/s in one process); this process's CPU {1000 * cpu / n:.1f} ms a batch, "
          f"its PostgreSQL backend's {1000 * backend_cpu / n:.1f}; "
          f"stored {by_status}")
    print(f"  {'ms/batch':>8} {'share':>6} {'calls/batch':>11}  statement")
    print(f"  {1000 * (total - sql) / n:8.2f} {100 * (total - sql) / total:5.1f}% {'':>11}  Python (intake, COPY text,"
          " handlers' own code)")
    for name, seconds in TIMES.most_common(args.top):
        print(f"  {1000 * seconds / n:8.2f} {100 * seconds / total:5.1f}% {CALLS[name] / n:11.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
