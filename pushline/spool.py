"""The durable fallback of the ack path: a PostgreSQL table.

While Redis cannot take a push, the web tier commits the envelope here and
still answers 202 (iAdvize retries only twice in 30 seconds, so an outage of
Redis must not become 503s). Workers forward spooled envelopes to the queue
once Redis answers again; a crash between the push and the delete leaves a
copy in both, which the receipt ids kept on each event turn into a no-op.
"""

from __future__ import annotations

import psycopg2

from pushline.db import BoundedSession
from pushline.queue import EventQueue


def spool(session: BoundedSession, item: bytes) -> None:
    """Durable once this returns: the session commits each statement."""
    session.execute("INSERT INTO spool (item) VALUES (%s)", (psycopg2.Binary(item),))


def forward(conn, queue: EventQueue, limit: int = 500) -> int:
    """Move up to `limit` spooled envelopes to the consumer end of the queue."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id, item FROM spool ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))
        rows = cur.fetchall()
        if not rows:
            return 0
        # The consumer end: spooled events are older than anything queued since.
        queue.redis.rpush(queue.incoming, *[bytes(item) for _, item in reversed(rows)])
        cur.execute("DELETE FROM spool WHERE id = ANY(%s)", ([i for i, _ in rows],))
    return len(rows)


def oldest(conn) -> float | None:
    """Unix time of the oldest spooled event, if any."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM min(spooled_at))::float8 FROM spool")
        return cur.fetchone()[0]


def depth(conn) -> int:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM spool")
        return cur.fetchone()[0]
