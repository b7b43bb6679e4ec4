"""Per-process clients, made on first use so that importing connects to nothing."""

from __future__ import annotations

import psycopg2
import redis
from flask import current_app

from pushline.config import Settings
from pushline.queue import EventQueue


def settings() -> Settings:
    return current_app.config["PUSHLINE"]


def queue() -> EventQueue:
    ext = current_app.extensions
    if "pushline.queue" not in ext:
        s = settings()
        # Bounded timeouts: a Redis outage must fail a push fast, never hang it.
        client = redis.Redis.from_url(s.redis_url, socket_timeout=2, socket_connect_timeout=1, health_check_interval=30)
        ext["pushline.queue"] = EventQueue(client, s.queue_prefix, s.lease_seconds)
    return ext["pushline.queue"]


def database_answers() -> bool:
    try:
        with psycopg2.connect(settings().database_url, connect_timeout=2) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        return True
    except psycopg2.Error:
        return False
