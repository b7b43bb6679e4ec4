"""The drain of the previous design beside this one, on the same machine in one session.

`python -m bench.compare_design --baseline /tmp/baseline` (a checkout of the older
commit, e.g. `git worktree add /tmp/baseline f0b2881`, with this .venv linked into it).

The previous design ran each `pushline worker` as one process whose drain thread
claimed and wrote the batches itself (no -c: one process a worker; its log says
"drain loop started"). This one runs a dispatcher thread in the worker's main
process that sends one Celery task per batch to a pool (`-c`). Both drain the same
--events Push API bodies (bench.run's) from a pre-filled queue, timed as `make
bench` times the drain; the previous design's workers run from the baseline
checkout (cwd and PYTHONPATH) on a database migrated by its own code
(pushline_bench_old). The runs alternate back to back, old then new, in every round:

    old 1 worker, new 1 worker (-c 1), old 2 workers, new 2 workers (-c 1 each),
    new 1 worker -c 2

and the figures are the medians over --rounds rounds (each round's old/new ratios
too). Each run also records the CPU time its processes used (bench/hotspots.py's
DrainObserver, without py-spy): per event, the workers' own processes (the new
design's main process apart from its pool), the PostgreSQL backends and
redis-server (shared with whatever else uses it). Writes var/bench/compare_design.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.hotspots import DrainObserver
from bench.run import LOGS, ROOT, Bench, Proc

# Key -> (label, design, workers, concurrency), in each round's order.
RUNS = {
    "old_1": ("old design, 1 worker (one process, drain thread)", "old", 1, 1),
    "new_1": ("new design, 1 worker -c 1 (dispatcher + 1 pool process)", "new", 1, 1),
    "old_2": ("old design, 2 workers", "old", 2, 1),
    "new_2": ("new design, 2 workers -c 1 each", "new", 2, 1),
    "new_c2": ("new design, 1 worker -c 2", "new", 1, 2),
}
RATIOS = {"new_1_vs_old_1": ("new_1", "old_1"), "new_2_vs_old_2": ("new_2", "old_2"),
          "new_c2_vs_old_2": ("new_c2", "old_2"), "old_2_vs_old_1": ("old_2", "old_1"),
          "new_2_vs_new_1": ("new_2", "new_1")}


class OldBench(Bench):
    """The drain of another checkout: its workers, its migrations, its own database."""

    database = "pushline_bench_old"
    ready = "drain loop started"

    def __init__(self, args):
        self.code = Path(args.baseline).resolve()
        super().__init__(args)

    def migrate(self) -> None:
        env = {**os.environ, "DATABASE_URL": self.database_url, "PYTHONPATH": str(self.code)}
        subprocess.run([sys.executable, "-m", "pushline.cli", "migrate"], cwd=self.code, env=env, check=True,
                       capture_output=True)

    def workers(self, label: str, count: int, concurrency: int = 1, pool: str = "prefork") -> list[Proc]:
        if concurrency != 1:
            raise ValueError("the previous design has no -c: one process a worker")
        return [Proc(f"worker-{label}-{i}", [sys.executable, "-m", "pushline.cli", "worker", "--name",
                                             f"{label}-{i}@bench"], {**self.proc_env, "LOG_LEVEL": "INFO"},
                     cwd=self.code)
                for i in range(count)]


def load() -> tuple[str, str]:
    """The load average and the busiest processes, as the run starts."""
    top = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return Path("/proc/loadavg").read_text().strip(), "\n".join(top.splitlines()[1:6])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="/tmp/baseline", help="checkout of the previous design")
    parser.add_argument("--events", type=int, default=100_000, help="pre-filled Push API events per drain")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the five runs, back to back")
    args = parser.parse_args(argv)
    if not (Path(args.baseline) / "workers" / "drain.py").exists():
        print(f"compare_design: {args.baseline} holds no workers/drain.py (the previous design)", file=sys.stderr)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    bodies = Bench.bodies(args.events)
    started = load()
    new, old = Bench(args), None
    try:
        old = OldBench(args)
        benches = {"old": old, "new": new}
        rounds = []
        for index in range(args.rounds):
            r = {}
            for key, (label, design, workers, concurrency) in RUNS.items():
                observer = DrainObserver(benches[design], key, spy=False, rate=0)
                r[key] = benches[design].drain(key.replace("_", ""), bodies, workers, concurrency=concurrency,
                                               observer=observer)
                r[key]["cpu_us_per_event"] = cpu_per_event(observer.cpu, args.events)
                print(f"round {index + 1}/{args.rounds}: {label}: {r[key]['events_per_s']} ev/s "
                      f"({r[key]['seconds']} s; load {os.getloadavg()[0]:.2f}; CPU us/event "
                      f"{r[key]['cpu_us_per_event']})", flush=True)
            r["ratios"] = {k: round(r[a]["events_per_s"] / r[b]["events_per_s"], 3) for k, (a, b) in RATIOS.items()}
            rounds.append(r)
    finally:
        new.close()
        if old is not None:
            old.close()
    medians = {key: round(statistics.median(r[key]["events_per_s"] for r in rounds)) for key in RUNS}
    cpu = {key: {part: round(statistics.median(r[key]["cpu_us_per_event"][part] for r in rounds), 1)
                 for part in rounds[0][key]["cpu_us_per_event"]} for key in RUNS}
    ratios = {key: round(statistics.median(r["ratios"][key] for r in rounds), 3) for key in RATIOS}
    results = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
               "events": args.events, "baseline": str(Path(args.baseline).resolve()),
               "baseline_commit": _commit(args.baseline), "load_at_start": started[0], "top_at_start": started[1],
               "load_at_end": Path("/proc/loadavg").read_text().strip(),
               "events_per_s": medians, "ratios": ratios, "cpu_us_per_event": cpu,
               "rounds": [{key: r[key]["events_per_s"] for key in RUNS} for r in rounds],
               "ratios_each": [r["ratios"] for r in rounds],
               "worker_peak_rss_mb": {key: rounds[-1][key]["worker_peak_rss_mb"] for key in RUNS}}
    print()
    width = max(len(label) for label, *_ in RUNS.values())
    for key, (label, *_) in RUNS.items():
        each = " ".join(str(r[key]["events_per_s"]) for r in rounds)
        print(f"{label:<{width}}  {medians[key]:>6} ev/s  (rounds: {each}; peak RSS "
              f"{results['worker_peak_rss_mb'][key]} MB per process)")
    for key in RATIOS:
        each = " ".join(f"{r['ratios'][key]:.3f}" for r in rounds)
        print(f"{key:<{width}}  {ratios[key]:>6.3f}x    (rounds: {each})")
    print("CPU per event, us (medians of the rounds): " + "; ".join(
        f"{key}: " + ", ".join(f"{part} {v}" for part, v in cpu[key].items()) for key in RUNS))
    out = LOGS / "compare_design.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0


def cpu_per_event(cpu: dict[str, float], events: int) -> dict[str, float]:
    """Worker processes (main and pool apart), PostgreSQL, Redis, total: us per event."""
    parts = {"worker main": 0.0, "worker pool": 0.0, "postgres": 0.0, "redis": 0.0}
    for role, seconds in cpu.items():
        part = ("postgres" if role.startswith("postgres") else "redis" if role.startswith("redis")
                else "worker pool" if "pool" in role else "worker main")
        parts[part] += seconds
    parts["total"] = sum(parts.values())
    return {part: round(1e6 * seconds / events, 1) for part, seconds in parts.items()}


def _commit(path: str) -> str:
    done = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
