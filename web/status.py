"""GET /status (one HTML page, no build step) and GET /status.json (its figures)."""

from __future__ import annotations

import psycopg2
import redis
from flask import Blueprint, jsonify, render_template

from pushline.workerstats import WorkerStats
from web import services

bp = Blueprint("status", __name__)

_FIGURES = """
SELECT (SELECT count(*) FROM events WHERE received_at > now() - interval '1 minute') / 60.0,
       (SELECT count(*) FROM events WHERE status = 'rejected')
"""
_REASONS = """
SELECT name, error, received_at FROM events WHERE status = 'rejected' ORDER BY received_at DESC LIMIT 5
"""
_PER_MINUTE = """
SELECT to_char(date_trunc('minute', received_at), 'HH24:MI'), name, count(*)
FROM events WHERE received_at > now() - interval '30 minutes'
GROUP BY 1, 2 ORDER BY 1
"""
_PER_DAY = """
SELECT day::text, type, sum(conversations)::bigint FROM conversation_daily
WHERE day > (SELECT max(day) FROM conversation_daily) - 30  -- the latest 30 days with data
GROUP BY 1, 2 ORDER BY 1
"""


@bp.get("/status")
def page():
    return render_template("status.html")


@bp.get("/status.json")
def figures():
    out: dict = {"queue_depth": None, "worker_lag_seconds": None, "redis": "down", "database": "down"}
    try:
        queue = services.queue()
        out["queue_depth"] = queue.depth()
        lags = WorkerStats(queue.redis, services.settings().queue_prefix).read()["lag"]
        out["worker_lag_seconds"] = max(lags.values()) if lags else None
        out["redis"] = "up"
    except redis.RedisError:
        pass
    try:
        with psycopg2.connect(services.settings().database_url, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute(_FIGURES)
            rate, rejected = cur.fetchone()
            cur.execute(_REASONS)
            reasons = [{"name": n, "error": e, "received_at": r.isoformat()} for n, e, r in cur.fetchall()]
            cur.execute(_PER_MINUTE)
            per_minute = [{"minute": m, "name": n, "events": c} for m, n, c in cur.fetchall()]
            cur.execute(_PER_DAY)
            per_day = [{"day": d, "type": t, "conversations": c} for d, t, c in cur.fetchall()]
        conn.close()
        out.update(database="up", ingest_per_second=round(float(rate), 2), rejected=rejected,
                   latest_rejections=reasons, events_per_minute=per_minute, conversations_per_day=per_day)
    except psycopg2.Error:
        pass
    return jsonify(out)
