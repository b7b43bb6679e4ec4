"""Per-process clients, made on first use so that importing connects to nothing."""

from __future__ import annotations

import contextlib
import time

import psycopg2
import redis
from flask import current_app

from pushline.config import Settings
from pushline.queue import EventQueue
from pushline.resp import RespConnection


def settings() -> Settings:
    return current_app.config["PUSHLINE"]


def queue() -> EventQueue:
    ext = current_app.extensions
    if "pushline.queue" not in ext:
        s = settings()
        # Bounded timeouts: a Redis outage must fail a push fast, never hang it.
        client = redis.Redis.from_url(s.redis_url, socket_timeout=2, socket_connect_timeout=1, health_check_interval=30)
        fast = RespConnection.for_url(s.redis_url)  # the push's LPUSH, without redis-py's per-call overhead
        ext["pushline.queue"] = EventQueue(client, s.queue_prefix, s.lease_seconds, fast=fast)
    return ext["pushline.queue"]


class RedisBreaker:
    """After Redis fails, skip it for a moment instead of paying a timeout per push."""

    def __init__(self, pause: float = 1.0):
        self.pause = pause
        self.open_until = 0.0

    def closed(self) -> bool:
        return time.monotonic() >= self.open_until

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.pause


def breaker() -> RedisBreaker:
    return current_app.extensions.setdefault("pushline.breaker", RedisBreaker())


def spool_connection():
    """This process's PostgreSQL connection for the fallback, (re)made on demand."""
    conn = current_app.extensions.get("pushline.spool")
    if conn is None or conn.closed:
        conn = psycopg2.connect(settings().database_url, connect_timeout=2, application_name="pushline-web")
        current_app.extensions["pushline.spool"] = conn
    return conn


def drop_spool_connection() -> None:
    conn = current_app.extensions.pop("pushline.spool", None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def database_answers() -> bool:
    try:
        with psycopg2.connect(settings().database_url, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        return True
    except psycopg2.Error:
        return False
