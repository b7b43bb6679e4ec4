"""Processing stored events again: after a fix, a new handler, or to rebuild.

Events are read back from `events.payload`, classified with today's schemas
and handlers, their status and error updated, and the handlers applied to the
ones that now load. The handlers are idempotent, so replaying processed
events changes nothing that was right. Each page is one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from psycopg2.extras import execute_values

from schemas import push_timezone
from workers.intake import classify
from workers.registry import Registry, StoredEvent
from workers.store import apply_handlers

PAGE = 500


@dataclass(frozen=True)
class Selection:
    statuses: tuple[str, ...] | None = ("rejected", "unhandled")  # None: every status
    names: tuple[str, ...] | None = None
    since: dt.datetime | None = None  # on created_at
    until: dt.datetime | None = None

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        if self.statuses:
            clauses.append("status = ANY(%s)")
            params.append(list(self.statuses))
        if self.names:
            clauses.append("name = ANY(%s)")
            params.append(list(self.names))
        if self.since:
            clauses.append("created_at >= %s")
            params.append(self.since)
        if self.until:
            clauses.append("created_at < %s")
            params.append(self.until)
        return " AND ".join(clauses) or "true", params


def _replay_page(cur, rows, registry: Registry, tz) -> Counter:
    """rows: (id, event_key, payload, status, error). Returns transitions 'old->new'."""
    changes, stored, counts = [], [], Counter()
    with push_timezone(tz):
        for event_id, key, payload, old_status, old_error in rows:
            status, error, event, handler = classify(payload, registry)
            counts[f"{old_status}->{status}"] += 1
            if (status, error) != (old_status, old_error):
                changes.append((event_id, status, error))
            if status == "processed":
                stored.append((handler, StoredEvent(event_id, key, event)))
    if changes:
        execute_values(cur, """UPDATE events e SET status = v.status, error = v.error, processed_at = now()
                               FROM (VALUES %s) AS v(id, status, error) WHERE e.id = v.id""",
                       sorted(changes), template="(%s::bigint, %s::text, %s::text)", page_size=len(changes))
    apply_handlers(cur, stored)
    return counts


def replay(conn, registry: Registry, tz, selection: Selection = Selection()) -> Counter:
    """Re-process the selected events, a page per transaction, in id order."""
    where, params = selection.where()
    counts: Counter = Counter()
    last_id = 0
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(f"""SELECT id, event_key, payload, status, error FROM events
                            WHERE id > %s AND {where} ORDER BY id LIMIT %s FOR UPDATE""",
                        [last_id, *params, PAGE])
            rows = cur.fetchall()
            if not rows:
                return counts
            counts.update(_replay_page(cur, rows, registry, tz))
            last_id = rows[-1][0]


def rebuild(conn, registry: Registry, tz) -> Counter:
    """Empty the derived tables and replay every stored event, in one transaction.

    Workers block on the truncated tables until it commits (their events wait
    safely in Redis), so the result never mixes old and new rows.
    """
    counts: Counter = Counter()
    with conn:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE conversations, operator_sessions, operator_events")
        # Created order keeps each page's session window small.
        with conn.cursor(name="pushline_rebuild") as reader:
            reader.itersize = PAGE
            reader.execute("""SELECT id, event_key, payload, status, error FROM events
                              ORDER BY created_at NULLS LAST, id""")
            while rows := reader.fetchmany(PAGE):
                with conn.cursor() as cur:
                    counts.update(_replay_page(cur, rows, registry, tz))
    return counts


_MONTHLY_PARTITIONS = """
SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass AND NOT pg_get_expr(c.relpartbound, c.oid) LIKE 'DEFAULT%%'
"""


def prune(conn, before: dt.datetime, chunk: int = 10_000) -> int:
    """Delete events created before `before`; the derived tables keep every row.

    Monthly partitions wholly before the cut are dropped (instant, no bloat);
    the rest is deleted in chunks to keep each transaction short. The typed
    logins/logouts of those events go too: pairing only ever reads the recent ones.
    """
    total = 0
    with conn, conn.cursor() as cur:
        cur.execute(_MONTHLY_PARTITIONS)
        for name, upper in cur.fetchall():
            if upper <= before:
                cur.execute(f'SELECT count(*) FROM "{name}"')
                total += cur.fetchone()[0]
                cur.execute(f'DROP TABLE "{name}"')
    while True:
        with conn, conn.cursor() as cur:
            cur.execute("""DELETE FROM events WHERE id IN (
                               SELECT id FROM events WHERE coalesce(created_at, received_at) < %s LIMIT %s)""",
                        (before, chunk))
            total += cur.rowcount
            done = cur.rowcount < chunk
        if done:
            break
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM operator_events WHERE at < %s", (before,))
    return total
