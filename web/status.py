"""GET /status (one HTML page, no build step) and GET /status.json (its figures)."""

from __future__ import annotations

import psycopg2
import redis
from flask import Blueprint, jsonify, render_template

from pushline.pending import SPOOL_OLDEST, oldest_pending_seconds, stalled_workers
from pushline.workerstats import WorkerStats
from web import services

bp = Blueprint("status", __name__)

# Through functions that expose no payload: the web tier may not read events (0016).
_FIGURES = "SELECT ingest_per_second, rejected FROM pushline_status_figures()"
_REASONS = "SELECT name, error, received_at FROM pushline_latest_rejections(5)"
_PER_MINUTE = "SELECT minute, name, format, events FROM pushline_events_per_minute()"
# Conversations per day: the Push API's by type (chat, call, video), the
# webhooks' by channel (CHAT, CALL, FACEBOOK...), each over its latest 30 days
# with data, through the started_at indexes (0018).
_PER_DAY = "SELECT day::text, format, kind, conversations FROM pushline_conversations_per_day()"


def _database_figures() -> dict:
    rate, rejected = services.status_query(_FIGURES)[0]
    reasons = [{"name": n, "error": e, "received_at": r.isoformat()} for n, e, r in services.status_query(_REASONS)]
    per_minute = [{"minute": m, "name": n, "format": f, "events": c}
                  for m, n, f, c in services.status_query(_PER_MINUTE)]
    per_day = [{"day": d, "format": f, "type" if f == "push-api" else "channel": kind, "series": kind,
                "conversations": c} for d, f, kind, c in services.status_query(_PER_DAY)]
    return {"ingest_per_second": round(float(rate), 2), "rejected": rejected, "latest_rejections": reasons,
            "events_per_minute": per_minute, "conversations_per_day": per_day,
            "spool_oldest": services.status_query(SPOOL_OLDEST)[0][0]}


@bp.get("/status")
def page():
    return render_template("status.html")


@bp.get("/status.json")
def figures():
    settings = services.settings()
    out: dict = {"queue_depth": None, "worker_lag_seconds": None, "redis": "down", "database": "down",
                 "oldest_pending_seconds": None, "dead_letters": None, "workers": [],
                 "stall_threshold_seconds": settings.worker_stall_seconds}
    spool_oldest, spool_known = None, False
    try:
        figures = dict(services.cached("status", _database_figures))  # a copy: the cached one stays whole
        spool_oldest, spool_known = figures.pop("spool_oldest"), True
        out.update(database="up", **figures)
    except psycopg2.Error:
        pass
    try:
        queue = services.queue()
        out["queue_depth"] = queue.depth()
        stats = WorkerStats(queue.redis, settings.queue_prefix)
        lags = stats.read()["lag"]
        out["worker_lag_seconds"] = max(lags.values()) if lags else None
        out["dead_letters"] = queue.dead_letter_count()
        # Without the spool's figure the age may be too low: say so rather than guess.
        out["oldest_pending_seconds"] = oldest_pending_seconds(queue, spool_oldest)
        out["oldest_pending_includes_spool"] = spool_known
        states = stats.drain_states()
        stalled = set(stalled_workers(states, settings.worker_stall_seconds))
        out["workers"] = [{"name": name, **state, "stalled": name in stalled} for name, state in sorted(states.items())]
        out["redis"] = "up"
    except redis.RedisError:
        pass
    return jsonify(out)
