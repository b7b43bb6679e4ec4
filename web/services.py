"""Per-thread clients, made on first use so that importing connects to nothing.

gunicorn runs gthread workers: several threads per process serve pushes. The
ack path's bare RESP socket and the PostgreSQL sessions serve one request at
a time, so each thread has its own (the breaker is shared: Redis is down for
the whole process, not for one thread).
"""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg2
from flask import current_app

from pushline import redis_client
from pushline.config import Settings
from pushline.db import BoundedSession
from pushline.queue import EventQueue
from pushline.resp import RespConnection

# A push waits at most this long on PostgreSQL (the spool), per statement.
SPOOL_IO_SECONDS = 2.0


def settings() -> Settings:
    return current_app.config["PUSHLINE"]


def _mine() -> dict:
    """This thread's clients for this app."""
    local = current_app.extensions.get("pushline.threads")
    if local is None:
        local = current_app.extensions.setdefault("pushline.threads", threading.local())
    try:
        return local.clients
    except AttributeError:
        local.clients = {}
        return local.clients


def queue() -> EventQueue:
    mine = _mine()
    if "queue" not in mine:
        s = settings()
        # Bounded timeouts: a Redis outage must fail a push fast, never hang it.
        client = redis_client.client(s.redis_url, "web")
        fast = RespConnection.for_url(s.redis_url)  # the push's LPUSH, without redis-py's per-call overhead
        mine["queue"] = EventQueue(client, s.queue_prefix, s.lease_seconds, fast=fast)
    return mine["queue"]


class RedisBreaker:
    """After Redis fails, skip it for a moment instead of paying a timeout per push."""

    def __init__(self, pause: float = 1.0, settle: float = 30.0):
        self.pause = pause
        self.settle = settle
        self.open_until = 0.0
        self.tripped_at = float("-inf")

    def closed(self) -> bool:
        return time.monotonic() >= self.open_until

    def steady(self) -> bool:
        """Redis has not failed for `settle` seconds: a push may run on the event loop (web/asgi.py)."""
        return time.monotonic() - self.tripped_at >= self.settle

    def trip(self) -> None:
        self.tripped_at = time.monotonic()
        self.open_until = self.tripped_at + self.pause


def app_breaker(app) -> RedisBreaker:
    return app.extensions.setdefault("pushline.breaker", RedisBreaker())


def breaker() -> RedisBreaker:
    return app_breaker(current_app)


def spool_connection() -> BoundedSession:
    """This process's PostgreSQL session for the fallback, (re)made on demand.

    Bounded: with PostgreSQL paused as well as Redis, a push gets its 503
    within seconds instead of hanging until gunicorn kills the worker."""
    mine = _mine()
    conn = mine.get("spool")
    if conn is None or conn.closed:
        conn = BoundedSession(settings().database_url, "pushline-web", io_seconds=SPOOL_IO_SECONDS)
        mine["spool"] = conn
    return conn


def drop_spool_connection() -> None:
    conn = _mine().pop("spool", None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def database_answers() -> bool:
    try:
        session = BoundedSession(settings().database_url, "pushline-web-ready", io_seconds=2.0)
    except psycopg2.Error:
        return False
    try:
        session.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False
    finally:
        session.close()


# Figures read from PostgreSQL for /status.json and /metrics are this many seconds
# old at most: a dashboard or several scrapers polling every second cost one
# round of queries per process and period, not one per request.
FIGURES_CACHE_SECONDS = 2.0


def status_session() -> BoundedSession:
    """One bounded PostgreSQL session per process for /status.json and /metrics
    (statement timeout 2 s; it serves one statement at a time, so threads share it)."""
    ext = current_app.extensions
    with _STATUS_LOCK:
        conn = ext.get("pushline.status")
        if conn is None or conn.closed:
            conn = BoundedSession(settings().database_url, "pushline-web-status", io_seconds=2.0)
            ext["pushline.status"] = conn
    return conn


_STATUS_LOCK = threading.Lock()


def cached(name: str, compute):
    """`compute()`, or its value from less than FIGURES_CACHE_SECONDS ago. Failures are not kept."""
    cache = current_app.extensions.setdefault("pushline.figures", {})
    hit = cache.get(name)
    now = time.monotonic()
    if hit is not None and now - hit[0] < FIGURES_CACHE_SECONDS:
        return hit[1]
    value = compute()
    cache[name] = (now, value)
    return value


def status_query(sql: str, params=None) -> list[tuple]:
    """Rows of a status query; the session is dropped on any error (made anew next time)."""
    try:
        return status_session().execute(sql, params).fetchall()
    except psycopg2.Error:
        conn = current_app.extensions.pop("pushline.status", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        raise
