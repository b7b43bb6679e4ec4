"""Replay, rebuild and prune, run in place: `python -m workers.maintenance ...`.

`pushline replay` and `pushline prune` run this module in place, or send the
same work to the workers as a task (`--enqueue`, see workers.tasks), so that
the shared package never imports a tier.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from pushline.config import Settings
from pushline.db import TOOL, connect
from workers.handlers import registry_with_handlers
from workers.replay import Selection, prune, replay
from workers.replay import rebuild as rebuild_tables

DEFAULT_STATUSES = ("rejected", "unhandled")


def replay_events(settings: Settings, statuses=DEFAULT_STATUSES, names=None, since=None, until=None,
                  rebuild: bool = False) -> dict:
    """Process stored events again (by default the rejected and unhandled ones;
    `statuses=None`: every status);
    with `rebuild`, empty the derived tables and rebuild them from every event."""
    conn = connect(settings.database_url, "pushline-replay", TOOL)
    try:
        if rebuild:
            counts = rebuild_tables(conn, registry_with_handlers(), settings.tzinfo)
        else:
            selection = Selection(statuses=tuple(statuses) if statuses else None,
                                  names=tuple(names) if names else None, since=since, until=until)
            counts = replay(conn, registry_with_handlers(), settings.tzinfo, selection)
    finally:
        conn.close()
    return {"replayed": sum(counts.values()), "transitions": dict(sorted(counts.items()))}


def prune_events(settings: Settings, before: dt.datetime) -> dict:
    conn = connect(settings.database_url, "pushline-prune", TOOL)
    try:
        return {"deleted_events": prune(conn, before)}
    finally:
        conn.close()


def when(text: str, settings: Settings) -> dt.datetime:
    """A date or datetime on the command line; naive ones are in PUSH_TIMEZONE."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"pushline: not a date or ISO datetime: {text!r}") from None
    if value.tzinfo:
        return value
    from schemas.fields import localize  # the events' own rule for local times at a clock change

    return localize(value, settings.tzinfo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushline-maintenance")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay")
    rp.add_argument("--status", default=",".join(DEFAULT_STATUSES))
    rp.add_argument("--all-statuses", action="store_true")
    rp.add_argument("--name", action="append")
    rp.add_argument("--since")
    rp.add_argument("--until")
    rp.add_argument("--rebuild", action="store_true")
    pr = sub.add_parser("prune")
    pr.add_argument("--before", required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    settings.require("DATABASE_URL")
    if args.command == "prune":
        report = prune_events(settings, when(args.before, settings))
        print(json.dumps(report))
        return 0
    statuses = None if args.all_statuses else args.status.split(",")
    report = replay_events(settings, statuses=statuses, names=args.name,
                           since=when(args.since, settings) if args.since else None,
                           until=when(args.until, settings) if args.until else None, rebuild=args.rebuild)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
