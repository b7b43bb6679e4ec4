"""Where the drain's and the ack path's time goes: CPU per process and py-spy samples.

    python -m bench.hotspots drain [--design new|old] [--workers N] [-c N] [--stream push|mixed]
    python -m bench.hotspots ack [--seconds S]

drain: one drain of --events queued events (as bench.run times it), with
  - the CPU time (user + system, from /proc) each process used during the drain:
    every worker process (the new design's main process, with its dispatcher
    thread, and its pool processes; the old design's single process), the
    PostgreSQL backends of the bench database, and redis-server (shared with
    whatever else uses it);
  - py-spy (`py-spy record --threads --idle`: wall-time samples) on every worker
    process: per thread role (the task, the pool process between tasks, the
    dispatcher, the old design's drain thread...) the share of its thread's wall
    time, split by component (PostgreSQL calls, marshmallow, COPY formatting...),
    and the lines the task (or drain thread) spends its own samples on.
ack: the Pushline web tier and the no-op reference (bench/noop_app.py under
  bench/reference_gunicorn.py) each loaded by wrk in turn, with py-spy (`--gil`:
  Python on CPU) on all of their gunicorn workers, and the CPU each used per request.

Raw samples are kept in var/bench/profiles/ (flamegraph.pl reads them); the summary
is printed and written beside them. --design old needs --baseline (bench/compare_design.py).
"""

from __future__ import annotations

import argparse
import collections
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.run import LOGS, TOKEN, Bench, Proc, free_port, http_ok, wait_for, wrk
from bench.webhooks import mixed_bodies, webhook_bodies

PROFILES = LOGS / "profiles"
TICKS = os.sysconf("SC_CLK_TCK")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/tmp/baseline/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw format: `frame;frame;... count`, root first; frames `func (file:line)`."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _frame(frame: str, with_line: bool) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    where = _short(m["file"])
    return f"{m['func']} ({where}:{m['line']})" if with_line and m["line"] else f"{m['func']} ({where})"


def thread_role(stack: list[str]) -> str:
    text = ";".join(stack)
    for marker, role in (("Heartbeat", "heartbeat thread"), ("LeaseKeeper", "lease keeper thread"),
                         ("workers/dispatch.py", "dispatcher thread"), ("drain.py", "drain thread"),
                         ("store_batch", "task (store_batch)"), ("billiard/pool.py", "pool: between tasks"),
                         ("celery/worker", "celery main thread"),
                         ("concurrent/futures/thread.py", "request threads"),
                         ("gunicorn/workers/gthread.py", "gunicorn main loop"),
                         ("gunicorn/asgi/", "asgi event loop"), ("asyncio/", "asgi event loop")):
        if marker in text:
            return role
    return "other"


# Innermost matching frame decides a sample's component (a C call shows as the
# Python line that made it: a line calling the database counts as PostgreSQL).
COMPONENTS = (
    ("psycopg2/", "PostgreSQL (client calls, waits)"), ("redis/", "Redis (calls, waits)"),
    ("pushline/resp.py", "Redis (calls, waits)"), ("kombu/", "kombu"), ("celery/", "celery"),
    ("billiard/", "billiard (pool pipe)"), ("marshmallow/", "marshmallow"), ("schemas/", "schemas (fields)"),
    ("pushline/pgcopy.py", "COPY text formatting"), ("pushline/identity.py", "event key (canonical JSON, sha256)"),
    ("workers/intake.py", "intake (JSON parse, classify)"), ("pushline/jsonvalues.py", "intake (JSON parse, classify)"),
    ("workers/handlers/", "handlers (Python side)"), ("workers/sessions.py", "handlers (Python side)"),
    ("workers/store.py", "store (Python side)"), ("workers/", "workers (other)"), ("pushline/logs.py", "logging"),
    ("logging/", "logging"), ("prometheus_client/", "prometheus_client"), ("web/edge.py", "edge checks (JSON parse)"),
    ("web/", "web views"), ("pushline/", "pushline (other)"), ("flask/", "Flask"), ("werkzeug/", "Werkzeug"),
    ("gunicorn/", "gunicorn"), ("asyncio/", "asyncio"), ("bench/", "the no-op view"),
    ("threading.py", "threading (waits)"), ("selectors.py", "selectors (waits)"), ("socket.py", "socket"),
)
_DB_CALL = re.compile(r"\b(execute|executemany|copy_expert|copy_from|commit|rollback|fetchall|fetchone|"
                      r"execute_values|connect)\(")


def component(frames: list[str]) -> str:
    m = _FRAME.match(frames[-1])
    if m and m["line"] and _DB_CALL.search(linecache.getline(m["file"], int(m["line"]))):
        return "PostgreSQL (client calls, waits)"
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        where = _short(m["file"]) if m else frame
        for marker, name in COMPONENTS:
            if where.startswith(marker):
                return name
    return "other (stdlib)"


def summarize(stacks: list[tuple[list[str], int]], top: int = 15, per_thread: bool = False) -> dict:
    """Shares by thread role, by role and component, and the lines the busiest role
    spends its own samples on: shares of all samples, or (`per_thread`, for wall-time
    samples) of the samples of the threads the role ran on, i.e. of their wall time."""
    roles, parts, threads = collections.Counter(), collections.Counter(), collections.Counter()
    tids: dict[str, set[str]] = collections.defaultdict(set)
    lines: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for stack, n in stacks:
        tid, frames = (stack[0], stack[1:]) if stack and stack[0].startswith("thread ") else ("", stack)
        if not frames:
            continue
        role = thread_role(frames)
        roles[role] += n
        threads[tid] += n
        tids[role].add(tid)
        parts[role, component(frames)] += n
        lines[role][_frame(frames[-1], True)] += n
    total = sum(roles.values()) or 1
    base = {r: (sum(threads[t] for t in tids[r]) if per_thread else total) or 1 for r in roles}
    busiest = max(roles, key=roles.get, default=None)
    for role in ("task (store_batch)", "drain thread", "request threads"):
        if role in roles:
            busiest = role
            break

    def pct(n, role):
        return round(100 * n / base[role], 1)

    return {"samples": total, "threads": [(r, pct(n, r)) for r, n in roles.most_common()],
            "components": {r: [(c, pct(n, r)) for (rr, c), n in parts.most_common() if rr == r and pct(n, r) >= 0.5]
                           for r in roles},
            "busiest": busiest,
            "lines": [(name, pct(n, busiest)) for name, n in lines[busiest].most_common(top)] if busiest else []}


def render(title: str, s: dict, extra: str = "") -> str:
    out = [f"== {title}: {s['samples']} samples{extra}"]
    for role, share in s["threads"]:
        out.append(f"  {share:5.1f}%  {role}: " + ", ".join(f"{c} {p}%" for c, p in s["components"][role]))
    if s["busiest"]:
        out.append(f"  lines {s['busiest']} spends its own samples on:")
        out += [f"    {p:5.1f}%  {name}" for name, p in s["lines"]]
    return "\n".join(out)


def gil_per_event(stacks: list[tuple[list[str], int]], rate: int, events: int) -> str:
    """GIL-holding samples of all the workers' processes as CPU microseconds per
    event: by thread role, and by component (the figures old and new designs share)."""
    roles, parts = collections.Counter(), collections.Counter()
    for stack, n in stacks:
        frames = stack[1:] if stack and stack[0].startswith("thread ") else stack
        if frames:
            roles[thread_role(frames)] += n
            parts[component(frames)] += n

    def us(n):
        return 1e6 * n / rate / events

    total = sum(roles.values())
    return "\n".join([f"== Python holding the GIL, all worker processes: {us(total):.1f} us/event",
                      "  by thread role: " + ", ".join(f"{r} {us(n):.1f}" for r, n in roles.most_common()),
                      "  by component: " + ", ".join(f"{c} {us(n):.1f}" for c, n in parts.most_common()
                                                     if us(n) >= 0.2)])


class Spy:
    """py-spy record on some processes until stopped."""

    def __init__(self, name: str, rate: int, idle: bool, native: bool = False):
        """idle: wall-time samples (--idle); else only samples holding the GIL (--gil),
        i.e. Python on CPU (py-spy takes threads blocked in a C call for active)."""
        self.name, self.rate, self.idle, self.native = name, rate, idle, native
        self.records: list[tuple[str, int, Path, subprocess.Popen]] = []
        self.started = 0.0

    def start(self, roles: dict[int, str]) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        PROFILES.mkdir(parents=True, exist_ok=True)
        for pid, role in roles.items():
            out = PROFILES / f"{self.name}-{role.replace(' ', '_')}-{pid}.txt"
            argv = [spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", str(self.rate), "--threads",
                    "--full-filenames"]
            argv.append("--idle" if self.idle else "--gil")
            if self.native:
                argv.append("--native")
            self.records.append((role, pid, out, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                                   stderr=subprocess.DEVNULL)))
        time.sleep(0.3)  # py-spy attaches (its idle samples of this wait are in the figures: keep it short)
        self.started = time.monotonic()

    def stop(self) -> float:
        seconds = time.monotonic() - self.started
        for *_, popen in self.records:
            popen.send_signal(signal.SIGINT)
        for *_, popen in self.records:
            try:
                popen.wait(60)
            except subprocess.TimeoutExpired:
                popen.kill()
        return seconds

    def by_role(self) -> dict[str, list[tuple[list[str], int]]]:
        out: dict[str, list] = collections.defaultdict(list)
        for role, _, path, _ in self.records:
            if path.exists():
                out[role] += parse_raw(path)
        return dict(out)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return sorted(found)


class DrainObserver:
    """Told by Bench.drain when the drain starts and ends."""

    def __init__(self, bench: Bench, name: str, spy: bool, rate: int, idle: bool = True, native: bool = False):
        self.bench, self.name = bench, name
        self.spy = Spy(name, rate, idle=idle, native=native) if spy else None
        self.cpu: dict[str, float] = collections.Counter()
        self.roles: dict[int, str] = {}

    def _pg(self) -> dict[int, float]:
        with self.bench.db.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid()")
            return {pid: cpu_seconds(pid) for (pid,) in cur.fetchall()}

    def _commands(self) -> dict[str, int]:
        return {name.removeprefix("cmdstat_"): stats["calls"]
                for name, stats in self.bench.redis.info("commandstats").items()}

    def _redis(self) -> float:
        info = self.bench.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def start(self, procs: list[Proc]) -> None:
        for i, p in enumerate(procs):
            main = p.popen.pid
            kids = _children(main)
            self.roles[main] = f"worker{i} main" if kids else f"worker{i}"
            for k, kid in enumerate(kids):
                self.roles[kid] = f"worker{i} pool{k}"
        self.before = {pid: cpu_seconds(pid) for pid in self.roles}
        self.pg_before, self.redis_before = self._pg(), self._redis()
        self.commands_before = self._commands()
        if self.spy:
            self.spy.start(self.roles)
        self.t0 = time.monotonic()

    def stop(self, procs: list[Proc]) -> None:
        self.seconds = time.monotonic() - self.t0
        for pid, role in self.roles.items():
            self.cpu[role] = cpu_seconds(pid) - self.before[pid]
        pg = self._pg()
        self.cpu["postgres backends"] = sum(v - self.pg_before.get(pid, 0.0) for pid, v in pg.items())
        self.cpu["redis-server (shared)"] = self._redis() - self.redis_before
        after = self._commands()
        self.commands = {c: n - self.commands_before.get(c, 0) for c, n in after.items()
                         if n - self.commands_before.get(c, 0) > 0}
        if self.spy:
            self.spy_seconds = self.spy.stop()


def bench_batch_size() -> int:
    from pushline.config import Settings

    return Settings.from_env().batch_size


def drain(args) -> str:
    if args.design == "old":
        from bench.compare_design import OldBench

        bench = OldBench(args)
    else:
        bench = Bench(args)
    half = args.events // 2
    bodies = (mixed_bodies(Bench.bodies(args.events - half), webhook_bodies(half)) if args.stream == "mixed"
              else Bench.bodies(args.events))
    name = f"drain-{args.design}-{args.workers}w-c{args.concurrency}-{args.stream}"
    observer = DrainObserver(bench, name, not args.no_py_spy, args.rate, idle=not args.gil, native=args.native)
    try:
        result = bench.drain(name, bodies, args.workers, concurrency=args.concurrency,
                             all_processed=args.stream == "mixed", observer=observer)
    finally:
        bench.close()
    total = sum(observer.cpu.values())
    lines = [f"{name}: {result['events']:,} events in {result['seconds']} s = {result['events_per_s']} ev/s"
             f"{' (under py-spy)' if observer.spy else ''}; load {os.getloadavg()[0]:.2f}",
             f"CPU during the drain ({observer.seconds:.1f} s wall, {os.cpu_count()} cores):"]
    for role, sec in sorted(observer.cpu.items(), key=lambda kv: -kv[1]):
        per_event = 1e6 * sec / result["events"]
        lines.append(f"  {role:<24} {sec:6.2f} s  {100 * sec / total:5.1f}%  {per_event:6.1f} us/event"
                     f"  busy {100 * sec / observer.seconds:5.1f}% of the wall")
    lines.append(f"  {'total':<24} {total:6.2f} s         {1e6 * total / result['events']:6.1f} us/event")
    batches = result["events"] / bench_batch_size()
    lines.append(f"Redis commands per {bench_batch_size()}-event batch (the server's, shared): " + ", ".join(
        f"{c} {n / batches:.1f}" for c, n in sorted(observer.commands.items(), key=lambda kv: -kv[1])
        if n / batches >= 0.1))
    if observer.spy and args.gil:
        every = [st for stacks in observer.spy.by_role().values() for st in stacks]
        lines.append(gil_per_event(every, args.rate, result["events"]))
    if observer.spy:
        for role, stacks in observer.spy.by_role().items():
            s = summarize(stacks, per_thread=not args.gil)
            lines.append(render(role, s, f" ({s['samples'] / (args.rate * observer.spy_seconds):.2f} threads holding"
                                         " the GIL on average); shares of these samples" if args.gil else
                                "; idle included: shares of the wall time of the thread(s) each ran on"))
    return "\n".join(lines)


def ack(args) -> str:
    bench = Bench(args)
    lines = []
    try:
        for label, app in (("reference", "bench.noop_app:app"), ("pushline", None)):
            server, port = (serve_with(bench, args.web_config, args.web_app) if app is None and args.web_config
                            else bench.serve(f"hotspots-{label}", app))
            try:
                url = f"http://127.0.0.1:{port}/push/{TOKEN}"
                wrk(url, 2)  # warm-up
                workers = _children(server.popen.pid)
                roles = {pid: f"{label} worker" for pid in workers}
                spy = None if args.no_py_spy else Spy(f"ack-{label}", args.rate, idle=False)
                before = {pid: cpu_seconds(pid) for pid in [server.popen.pid, *workers]}
                if spy:
                    spy.start(roles)
                redis_before = _redis_cpu(bench)
                result = wrk(url, args.seconds)
                redis_cpu = _redis_cpu(bench) - redis_before
                if spy:
                    seconds = spy.stop()
                cpu = sum(cpu_seconds(pid) - before[pid] for pid in workers)
                failed = result["errors"] + result["non2xx"]
                lines.append(f"{label}: {result['rps']:.0f} req/s{' (under py-spy)' if spy else ''}"
                             f"{f' ({failed} FAILED)' if failed else ''}, p50 "
                             f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms; gunicorn workers' CPU "
                             f"{1e6 * cpu / result['requests']:.0f} us/request ({cpu:.1f} s over {args.seconds} s), "
                             f"redis-server {1e6 * redis_cpu / result['requests']:.0f} us/request (shared)")
                if spy:
                    s = summarize(spy.by_role().get(f"{label} worker", []), top=25)
                    lines.append(render(f"{label}: {len(workers)} gunicorn workers", s,
                                        f" (holding the GIL: {s['samples'] / (args.rate * seconds):.2f} workers"
                                        " on average); shares of these samples"))
            finally:
                server.stop()
            bench.clear_redis()
    finally:
        bench.close()
    return "\n".join(lines)


def serve_with(bench: Bench, config: str, app: str) -> tuple[Proc, int]:
    """Pushline's app under another gunicorn settings file than `pushline web`'s,
    e.g. an earlier one: `git show <commit>:web/gunicorn.conf.py > /tmp/conf.py`
    with --web-app web.wsgi:app for a gthread one."""
    port = free_port()
    argv = [str(Path(sys.executable).parent / "gunicorn"), "-c", config, "--bind", f"127.0.0.1:{port}", app]
    proc = Proc("hotspots-pushline", argv, bench.proc_env)
    wait_for(lambda: http_ok(port), 30, "pushline to listen")
    return proc, port


def _redis_cpu(bench: Bench) -> float:
    info = bench.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("drain")
    d.add_argument("--design", choices=["new", "old"], default="new")
    d.add_argument("--baseline", default="/tmp/baseline")
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("-c", "--concurrency", type=int, default=1)
    d.add_argument("--stream", choices=["push", "mixed"], default="push")
    d.add_argument("--events", type=int, default=100_000)
    d.add_argument("--gil", action="store_true", help="py-spy --gil (Python on CPU) instead of --idle (wall time)")
    d.add_argument("--native", action="store_true", help="py-spy --native: C frames too (the garbage collector...)")
    a = sub.add_parser("ack")
    a.add_argument("--seconds", type=int, default=10)
    a.add_argument("--web-config", help="gunicorn settings file for Pushline instead of web/gunicorn.conf.py")
    a.add_argument("--web-app", default="web.wsgi:app", help="the app gunicorn serves with --web-config")
    for p in (d, a):
        p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
        p.add_argument("--no-py-spy", action="store_true", help="CPU per process only")
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    text = drain(args) if args.what == "drain" else ack(args)
    print(text)
    PROFILES.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = PROFILES / f"summary-{args.what}-{stamp}.txt"
    out.write_text(" ".join(sys.argv) + "\n" + text + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
