"""Processing stored events again: after a fix, a new handler, or to rebuild.

Events are read back from `events.payload`, classified with today's schemas
and handlers, their status and error updated, and the handlers applied to the
ones that now load. The handlers are idempotent, so replaying processed
events changes nothing that was right. Each page is one transaction.

As in workers/batch.py, nothing one event holds stops the others: a page
whose handlers fail for its data (not for the database) is applied again
event by event, each under its own savepoint, and an event that still fails
is marked `rejected` with the reason. Without that, one such event failed
its page for good: `replay` stopped there at every run, and `rebuild` (one
transaction) could never complete.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass

import psycopg2.errors
from psycopg2 import sql
from psycopg2.extras import execute_values

from pushline.db import DDL_LOCK_TIMEOUT, PARTITION_DDL_LOCK, PUSHLINE_LOCKS, is_transient
from schemas import push_timezone
from workers.intake import classify
from workers.registry import Handler, Registry, StoredEvent
from workers.store import apply_handlers

log = logging.getLogger(__name__)

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
    classified, stored = [], []
    with push_timezone(tz):
        for event_id, key, payload, old_status, old_error in rows:
            status, error, event, handler = classify(payload, registry)
            classified.append((event_id, old_status, old_error, status, error))
            if status == "processed":
                stored.append((handler, StoredEvent(event_id, key, event)))
    failed = _apply(cur, stored)
    changes, counts = [], Counter()
    for event_id, old_status, old_error, status, error in classified:
        if event_id in failed:
            status, error = "rejected", failed[event_id]
        counts[f"{old_status}->{status}"] += 1
        if (status, error) != (old_status, old_error):
            changes.append((event_id, status, error))
    if changes:
        execute_values(cur, """UPDATE events e SET status = v.status, error = v.error, processed_at = now()
                               FROM (VALUES %s) AS v(id, status, error) WHERE e.id = v.id""",
                       sorted(changes), template="(%s::bigint, %s::text, %s::text)", page_size=len(changes))
    return counts


def _apply(cur, stored: list[tuple[Handler, StoredEvent]]) -> dict[int, str]:
    """Apply the handlers to the page's events, together; when that fails for
    the data, each event alone under a savepoint. Returns, by events.id, why
    the events that failed alone did (their handlers' work rolled back).
    Transient errors propagate: the caller's transaction is retried whole."""
    if not stored:
        return {}
    cur.execute("SAVEPOINT replay_page")
    try:
        apply_handlers(cur, stored)
        failed = {}
    except Exception as exc:
        if is_transient(exc):
            raise
        cur.execute("ROLLBACK TO SAVEPOINT replay_page")
        log.warning("replay: a page of %d events failed; applying them one by one", len(stored), exc_info=True)
        failed = _one_by_one(cur, stored)
    cur.execute("RELEASE SAVEPOINT replay_page")
    return failed


def _one_by_one(cur, stored: list[tuple[Handler, StoredEvent]]) -> dict[int, str]:
    failed = {}
    for handler, event in stored:
        cur.execute("SAVEPOINT replay_event")
        try:
            apply_handlers(cur, [(handler, event)])
        except Exception as exc:
            if is_transient(exc):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT replay_event")
            first_line = (str(exc).strip().splitlines() or [""])[0][:500]
            failed[event.id] = f"handler: {type(exc).__name__}: {first_line}"  # as workers/batch.py words it
            log.error("replay: event rejected: its handler failed", extra={
                "event_id": event.id, "event_key": event.key, "event_name": event.event.name,
                "error": failed[event.id]})
        cur.execute("RELEASE SAVEPOINT replay_event")
    return failed


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
            cur.execute("""TRUNCATE conversations, operator_sessions, operator_events,
                           conversations_v2, conversation_assignments, satisfaction, user_sessions,
                           availability_periods, user_events, availability_events, webhook_locks,
                           conversation_event_ids""")
        # Created order keeps each page's session window small.
        with conn.cursor(name="pushline_rebuild") as reader:
            reader.itersize = PAGE
            reader.execute("""SELECT id, event_key, payload, status, error FROM events
                              ORDER BY created_at NULLS LAST, id""")
            while rows := reader.fetchmany(PAGE):
                with conn.cursor() as cur:
                    counts.update(_replay_page(cur, rows, registry, tz))
    return counts


# Operators with logins/logouts before the cut (the others lose nothing and
# keep their horizon, or have none).
_PRUNED_OPERATORS = "SELECT DISTINCT operator_id FROM operator_events WHERE at < %(cut)s ORDER BY 1"

# The operator's horizon moves to its last login before the cut (the cut when
# none), never back; its logins/logouts before the horizon go.
_ADVANCE_HORIZON = """
WITH h AS (
    INSERT INTO operator_horizons (operator_id, since)
    VALUES (%(op)s, coalesce((SELECT max(login_at) FROM operator_sessions
                              WHERE operator_id = %(op)s AND login_at < %(cut)s), %(cut)s))
    ON CONFLICT (operator_id) DO UPDATE SET since = greatest(operator_horizons.since, excluded.since)
    RETURNING since
)
DELETE FROM operator_events e USING h WHERE e.operator_id = %(op)s AND e.at < h.since
"""


def _advance_horizons(conn, before: dt.datetime) -> None:
    """Record each operator's horizon and drop its logins/logouts before it.

    One short transaction per operator, under the operator's advisory lock (the
    one the handler takes), so that no batch pairs from a window whose events
    vanish under it; holding one lock at a time, this never deadlocks with a
    batch, whatever order the batch takes its locks in.
    """
    with conn, conn.cursor() as cur:
        cur.execute(_PRUNED_OPERATORS, {"cut": before})
        operators = [op for op, in cur.fetchall()]
    for op in operators:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pushline_lock_operators(%s::bigint[])", ([op],))
            cur.execute(_ADVANCE_HORIZON, {"op": op, "cut": before})


# Range partitions of events and their bounds (NULL: MINVALUE / MAXVALUE).
_RANGE_PARTITIONS = r"""
SELECT c.relname,
       (regexp_match(b, 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
       (regexp_match(b, 'TO \(''([^'']+)''\)'))[1]::timestamptz
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid, pg_get_expr(c.relpartbound, c.oid) AS b
WHERE i.inhparent = 'events'::regclass AND b <> 'DEFAULT'
"""

# Partitions detached by prune, to be counted and dropped outside the DDL lock.
_DETACHED_PREFIX = "events_pruned_"
_DETACHED = r"""
SELECT c.relname FROM pg_class c
WHERE c.relkind = 'r' AND NOT c.relispartition AND c.relname LIKE 'events\_pruned\_%'
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
ORDER BY 1
"""


@dataclass(frozen=True)
class _Partition:
    name: str
    lower: dt.datetime | None  # None: MINVALUE
    upper: dt.datetime | None  # None: MAXVALUE


def _partitions_to_drop(partitions: list[_Partition], before: dt.datetime) -> tuple[list[str], dt.datetime] | None:
    """Which partitions hold only rows created before the cut, and the new upper
    bound of events_before; None when there are none (or the layout is not
    migration 0009's). The monthly partitions wholly before the cut are a
    prefix of the monthly range; when any goes, or when events_before ends at
    or before the cut, events_before goes too and comes back empty, reaching up
    to the first partition kept, so that the range stays without a hole.
    """
    before_part = [p for p in partitions if p.lower is None]
    if [p.name for p in before_part] != ["events_before"] or before_part[0].upper is None:
        return None
    months = sorted((p for p in partitions if p.lower is not None and p.upper is not None), key=lambda p: p.lower)
    gone = [p for p in months if p.upper <= before]
    if not gone and before_part[0].upper > before:
        return None
    kept = [p.lower for p in partitions if p.lower is not None and p not in gone]
    if not kept:  # 0009 always has events_after
        return None
    return ["events_before", *(p.name for p in gone)], min(kept)


def _detach_partitions_before(conn, before: dt.datetime) -> bool:
    """Detach the partitions whose rows all precede the cut and put an empty
    events_before in their place, in one transaction under the partition DDL
    lock: the range never has a hole, so no dated row can meet the default
    partition. Detaching (not dropping) keeps ACCESS EXCLUSIVE on events to
    catalog changes; the detached tables are counted and dropped afterwards.
    False when the locks could not be had in time (the chunked delete then
    does the work).
    """
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (PUSHLINE_LOCKS, PARTITION_DDL_LOCK))
            cur.execute(_RANGE_PARTITIONS)
            plan = _partitions_to_drop([_Partition(*row) for row in cur.fetchall()], before)
            if plan is None:
                return True
            names, bound = plan
            # The bound as a UTC literal, whatever the session's TimeZone; it must read back exactly.
            cur.execute("""SELECT b, b::timestamptz = %(t)s FROM (
                               SELECT to_char(%(t)s::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'
                           ) AS x(b)""", {"t": bound})
            literal, exact = cur.fetchone()
            if not exact:
                raise RuntimeError(f"partition bound {bound} is not a whole second")
            for name in names:
                cur.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {}").format(sql.Identifier(name)))
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(name), sql.Identifier(_DETACHED_PREFIX + name)))
            # Its indexes too, so that the new events_before's get the usual names.
            cur.execute("""SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                           WHERE i.indrelid = %s::regclass ORDER BY 1""", (_DETACHED_PREFIX + "events_before",))
            for index, in cur.fetchall():
                cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(index), sql.Identifier((_DETACHED_PREFIX + index)[:63])))
            cur.execute(sql.SQL("CREATE TABLE events_before PARTITION OF events FOR VALUES FROM (MINVALUE) TO ({})")
                        .format(sql.Literal(literal)))
    except psycopg2.errors.LockNotAvailable:
        log.warning("prune: partitions are busy; deleting their rows in chunks instead of dropping them")
        return False
    except psycopg2.errors.InsufficientPrivilege:
        # A worker's login (pushline_worker) may delete rows, never alter tables:
        # retention run as a task deletes in chunks; `pushline prune` as the owner drops.
        log.info("prune: not the tables' owner; deleting the rows in chunks instead of dropping partitions")
        return False
    return True


def _drop_detached(conn) -> int:
    """Count and drop what prune detached (also what an interrupted prune left)."""
    total = 0
    with conn, conn.cursor() as cur:
        cur.execute(_DETACHED)
        names = [name for name, in cur.fetchall()]
    for name in names:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
            total += cur.fetchone()[0]
            cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return total


def _delete_in_chunks(conn, where: str, params: dict, chunk: int) -> int:
    total = 0
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM events WHERE {where} AND id IN (SELECT id FROM events WHERE {where} LIMIT %(n)s)",
                        {**params, "n": chunk})
            total += cur.rowcount
        if cur.rowcount < chunk:
            return total


def prune(conn, before: dt.datetime, chunk: int = 10_000) -> int:
    """Delete events created before `before` (undated ones: received before
    it); the derived tables keep every row. Returns how many events went.

    Sessions first: each operator's horizon moves to its last login before the
    cut, and only its logins/logouts before the horizon are deleted, so that
    any login or logout arriving later is paired with everything it needs (see
    workers/handlers/operators.py). Then the events: the partitions wholly
    before the cut are detached and dropped (instant, no bloat); the rest is
    deleted in chunks to keep each transaction short.
    """
    _advance_horizons(conn, before)
    total = _drop_detached(conn)  # left by an interrupted prune: rows before an earlier cut
    _detach_partitions_before(conn, before)
    total += _drop_detached(conn)
    total += _delete_in_chunks(conn, "created_at < %(cut)s", {"cut": before}, chunk)
    total += _delete_in_chunks(conn, "created_at IS NULL AND received_at < %(cut)s", {"cut": before}, chunk)
    return total
