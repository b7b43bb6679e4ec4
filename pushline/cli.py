"""`pushline` command line: python -m pushline.cli <command>.

  migrate   apply database migrations (idempotent)
  web       run the web tier (gunicorn) with settings from the environment
  worker    run one Celery worker (a prefork pool, -c N) with its own node name
  beat      run Celery beat, the housekeeping's clock (exactly one per deployment)
  flower    run Flower behind a password (FLOWER_BASIC_AUTH=user:password)
  roles     login roles for web, worker and a sample analyst (PUSHLINE_*_DB_PASSWORD)
  run       everything on one machine, with embedded servers if needed
  stats     queue depth, oldest pending age, dead letters, workers' progress, event counts
  health    exit 1 when events wait and this host's workers made no progress (for supervisors)
  replay    process rejected/unhandled events again (or a time range; --rebuild: everything;
            --dead-letters: put parked items back on the queue; --enqueue: as a task)
  prune     delete events created before a date (derived tables keep their rows; --enqueue: as a task)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from pushline.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _exec(argv: list[str]) -> None:
    """Replace this process (signals then reach the server directly)."""
    os.chdir(ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.execv(argv[0], argv)


def _embedded(settings: Settings) -> Settings:
    """With no URLs set, the servers `make run` embeds, when they are up (so that
    `make stats` and friends work beside `make run` as they are)."""
    import dataclasses

    from pushline import devstack

    found = {}
    pg_port = int(os.environ.get("PUSHLINE_PG_PORT", devstack.PG_PORT))
    redis_port = int(os.environ.get("PUSHLINE_REDIS_PORT", devstack.REDIS_PORT))
    if not settings.database_url and devstack.port_open(pg_port):
        found["database_url"] = f"postgresql://postgres@127.0.0.1:{pg_port}/pushline"
    if not settings.redis_url and devstack.port_open(redis_port):
        found["redis_url"] = f"redis://127.0.0.1:{redis_port}/0"
    return dataclasses.replace(settings, **found) if found else settings


def _settings(*required: str) -> Settings:
    try:
        settings = _embedded(Settings.from_env())
        settings.require(*required)
    except ConfigError as exc:
        print(f"pushline: {exc}", file=sys.stderr)
        sys.exit(2)
    return settings


def cmd_migrate(args) -> int:
    from pushline.db import migrate

    settings = _settings("DATABASE_URL")
    applied = migrate(settings.database_url, settings.timezone)
    print(f"migrations applied: {', '.join(applied) or 'none pending'}")
    return 0


def cmd_web(args) -> int:
    settings = _settings("PUSH_TOKENS", "REDIS_URL", "DATABASE_URL")
    try:
        settings.check_production()
    except ConfigError as exc:
        print(f"pushline: {exc}", file=sys.stderr)
        return 2
    bind = args.bind or f"0.0.0.0:{settings.port}"
    argv = [str(BIN / "gunicorn"), "-c", str(ROOT / "web" / "gunicorn.conf.py"), "--bind", bind]
    if settings.internal_port is not None:
        # The figures' listener, on the same interface as the push one (0.0.0.0 in a
        # container, reached by Prometheus on the internal network; never published).
        argv += ["--bind", f"{bind.rsplit(':', 1)[0]}:{settings.internal_port}"]
    argv.append("web.asgi:app")
    _exec(argv)


def cmd_worker(args) -> int:
    settings = _settings("REDIS_URL", "DATABASE_URL")
    name = args.name or f"pushline-{os.getpid()}@{socket.gethostname()}"
    concurrency = args.concurrency or settings.worker_concurrency
    pool = args.pool or settings.worker_pool
    argv = [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "--pool", pool, "-n", name,
            "--without-mingle", "--without-gossip", "--loglevel", settings.log_level]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    _export(settings)
    _exec(argv)


def cmd_beat(args) -> int:
    settings = _settings("REDIS_URL")  # beat only sends tasks: it never touches PostgreSQL
    schedule = args.schedule or str(_var_dir() / "celerybeat-schedule")
    argv = [str(BIN / "celery"), "-A", "workers.celery_app", "beat", "--schedule", schedule,
            "--loglevel", settings.log_level]
    _export(settings)
    _exec(argv)


def cmd_roles(args) -> int:
    from pushline.roles import LOGINS, ensure_login_roles

    settings = _settings("DATABASE_URL")
    done = ensure_login_roles(settings.database_url, dict(os.environ))
    skipped = [login for login in LOGINS if login not in done]
    print(json.dumps({"login_roles": done, "skipped_no_password": skipped}))
    return 0


def cmd_flower(args) -> int:
    """Flower behind a password: its API can shut workers down, so it never runs open."""
    settings = _settings("REDIS_URL")
    credentials = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
    if not all(":" in pair and pair.split(":", 1)[0] and pair.split(":", 1)[1] for pair in credentials.split(",")):
        print("pushline: flower needs FLOWER_BASIC_AUTH=user:password (Flower can shut workers down)",
              file=sys.stderr)
        return 2
    _export(settings)
    # Flower reads FLOWER_BASIC_AUTH itself: the password stays out of the process list.
    _exec([str(BIN / "celery"), "-A", "workers.celery_app", "flower", f"--port={args.port}"])


def _var_dir() -> Path:
    from pushline import devstack

    path = devstack.var_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _export(settings: Settings) -> None:
    """The URLs found for embedded servers, for the process about to replace this one."""
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["REDIS_URL"] = settings.redis_url


def cmd_run(args) -> int:
    from pushline.devstack import run

    return run()


def _queue(settings: Settings):
    from pushline import redis_client
    from pushline.queue import EventQueue

    return EventQueue(redis_client.client(settings.redis_url, "tool"), settings.queue_prefix, settings.lease_seconds)


def _enqueue(settings: Settings, task: str, kwargs: dict) -> int:
    from pushline.celery_client import send

    task_id = send(settings, task, kwargs)
    print(json.dumps({"enqueued": task, "task_id": task_id, "kwargs": kwargs}))
    return 0


def _in_place(argv: list[str]) -> None:
    """Run the maintenance module in place of this process (it is the workers' code)."""
    _exec([sys.executable, "-m", "workers.maintenance", *argv])


def _when_text(text: str | None, settings: Settings) -> str | None:
    """Checked here so that a typo fails before anything is sent; the worker reads
    naive times in PUSH_TIMEZONE."""
    import datetime as dt

    if text is None:
        return None
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        print(f"pushline: not a date or ISO datetime: {text!r}", file=sys.stderr)
        sys.exit(2)
    return text


def cmd_replay(args) -> int:
    if args.dead_letters:
        moved = _queue(_settings("REDIS_URL")).requeue_dead_letters()
        print(json.dumps({"dead_letters_requeued": moved}))
        return 0
    if args.enqueue:
        settings = _settings("REDIS_URL")
        return _enqueue(settings, "pushline.replay", {
            "statuses": None if args.all_statuses else args.status.split(","), "names": args.name,
            "since": _when_text(args.since, settings), "until": _when_text(args.until, settings),
            "rebuild": args.rebuild})
    _export(_settings("DATABASE_URL"))
    argv = ["replay", "--status", args.status]
    argv += ["--all-statuses"] if args.all_statuses else []
    argv += [f"--name={n}" for n in args.name or []]
    argv += [f"--since={args.since}"] if args.since else []
    argv += [f"--until={args.until}"] if args.until else []
    argv += ["--rebuild"] if args.rebuild else []
    _in_place(argv)


def cmd_prune(args) -> int:
    if args.enqueue:
        settings = _settings("REDIS_URL")
        return _enqueue(settings, "pushline.prune", {"before": _when_text(args.before, settings)})
    _export(_settings("DATABASE_URL"))
    _in_place(["prune", f"--before={args.before}"])


def cmd_stats(args) -> int:
    from pushline import spool
    from pushline.db import TOOL, connect
    from pushline.pending import oldest_pending_seconds, stalled_workers
    from pushline.workerstats import WorkerStats

    settings = _settings("REDIS_URL", "DATABASE_URL")
    queue = _queue(settings)
    conn = connect(settings.database_url, "pushline-stats", TOOL)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT name, status, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2")
            counts = [{"name": n, "status": s, "events": c} for n, s, c in cur.fetchall()]
            cur.execute("""SELECT error, count(*) FROM events WHERE status = 'rejected'
                           GROUP BY 1 ORDER BY 2 DESC LIMIT 10""")
            reasons = [{"error": e, "events": c} for e, c in cur.fetchall()]
        spool_oldest, spooled = spool.oldest(conn), spool.depth(conn)
    finally:
        conn.close()
    figures = WorkerStats(queue.redis, settings.queue_prefix)
    workers = figures.drain_states()
    stalled = set(stalled_workers(workers, settings.worker_stall_seconds))
    now = time.time()
    report = {
        "queue_depth": queue.depth(),
        "oldest_pending_seconds": oldest_pending_seconds(queue, spool_oldest),
        "claimed_batches": queue.claimed(),
        "oldest_claim_age_seconds": queue.oldest_claim_age(),
        "spooled": spooled,
        "dead_letters": queue.dead_letter_count(),
        "dead_letter_reasons": queue.dead_letter_reasons(),
        "workers": {name: {**state, "stalled": name in stalled} for name, state in sorted(workers.items())},
        # Seconds since beat's duties last ran: a growing figure means no beat runs.
        "housekeeping_seconds_ago": {duty: round(now - at, 1) for duty, at in sorted(figures.duties().items())},
        "events": counts,
        "rejected_reasons": reasons,
    }
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_health(args) -> int:
    """For a supervisor's health check: exit 1 when events have waited longer than
    the stall time and no worker of this host (or the one named) progressed within it."""

    from pushline.pending import oldest_pending_seconds
    from pushline.workerstats import WorkerStats

    settings = _settings("REDIS_URL")
    stall = args.max_stall or settings.worker_stall_seconds
    queue = _queue(settings)
    oldest = oldest_pending_seconds(queue, None)
    states = WorkerStats(queue.redis, settings.queue_prefix).drain_states()
    mine = {n: s for n, s in states.items()
            if (n == args.worker if args.worker else n.endswith("@" + socket.gethostname()))}
    now = time.time()
    progress = max((float(s.get("last_progress", 0)) for s in mine.values()), default=None)
    since = None if progress is None else round(now - progress, 1)
    healthy = oldest <= stall or (since is not None and since <= stall)
    print(json.dumps({"healthy": healthy, "oldest_pending_seconds": oldest, "workers": sorted(mine),
                      "seconds_since_progress": since, "max_stall_seconds": stall}))
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pushline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    web = sub.add_parser("web", help="run the web tier")
    web.add_argument("--bind", help="host:port (default 0.0.0.0:$PORT)")
    web.set_defaults(func=cmd_web)
    worker = sub.add_parser("worker", help="run one worker")
    worker.add_argument("--name", help="Celery node name (default pushline-<pid>@<host>)")
    worker.add_argument("-c", "--concurrency", type=int,
                        help="pool processes (default: PUSHLINE_WORKER_CONCURRENCY, else one per CPU)")
    worker.add_argument("-P", "--pool", choices=("prefork", "threads"),
                        help="Celery pool (default: PUSHLINE_WORKER_POOL, else prefork)")
    worker.set_defaults(func=cmd_worker)
    beat = sub.add_parser("beat", help="run Celery beat (the housekeeping schedule; run exactly one)")
    beat.add_argument("--schedule", help="beat's schedule file (default var/celerybeat-schedule)")
    beat.set_defaults(func=cmd_beat)
    sub.add_parser("roles", help="create or update the tiers' login roles (passwords from the environment)"
                   ).set_defaults(func=cmd_roles)
    flower = sub.add_parser("flower", help="run Flower (needs FLOWER_BASIC_AUTH=user:password)")
    flower.add_argument("--port", type=int, default=5555)
    flower.set_defaults(func=cmd_flower)
    sub.add_parser("run", help="run everything locally").set_defaults(func=cmd_run)
    sub.add_parser("stats", help="queue and event statistics").set_defaults(func=cmd_stats)
    health = sub.add_parser("health", help="exit 1 when events wait and the worker(s) made no progress")
    health.add_argument("--worker", help="node name (default: every worker of this host)")
    health.add_argument("--max-stall", type=float, help="seconds (default: PUSHLINE_WORKER_STALL_SECONDS)")
    health.set_defaults(func=cmd_health)
    replay = sub.add_parser("replay", help="process stored events again")
    replay.add_argument("--status", default="rejected,unhandled", help="comma-separated (default: %(default)s)")
    replay.add_argument("--all-statuses", action="store_true", help="every status (with --since/--until)")
    replay.add_argument("--name", action="append", help="only events of this name (repeatable)")
    replay.add_argument("--since", help="created at or after (date or ISO datetime)")
    replay.add_argument("--until", help="created before (date or ISO datetime)")
    replay.add_argument("--dead-letters", action="store_true",
                        help="put the parked dead letters back on the queue (after a fix)")
    replay.add_argument("--rebuild", action="store_true",
                        help="empty conversations and operator_sessions and rebuild them from all events")
    replay.add_argument("--enqueue", action="store_true", help="send it to the workers as a task instead")
    replay.set_defaults(func=cmd_replay)
    prune = sub.add_parser("prune", help="retention: delete events created before a date")
    prune.add_argument("--before", required=True, help="date or ISO datetime")
    prune.add_argument("--enqueue", action="store_true", help="send it to the workers as a task instead")
    prune.set_defaults(func=cmd_prune)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
