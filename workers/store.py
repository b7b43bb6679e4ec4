"""Writing a batch: events and receipts, then the handlers, in one transaction."""

from __future__ import annotations

from collections import defaultdict

from psycopg2.extras import Json, execute_values

from workers.intake import Incoming
from workers.registry import Handler, StoredEvent

_INSERT_EVENTS = """
INSERT INTO events (event_key, source, name, created_at, sent_at, received_at, deliveries, payload, status, error)
VALUES %s
ON CONFLICT (event_key) DO NOTHING
RETURNING id, event_key
"""

# Only receipts first recorded in this transaction are added, so a queue item
# delivered twice (a worker died after commit, before ack) counts once.
_COUNT_RECEIPTS = """
UPDATE events e SET
    deliveries = e.deliveries + v.n,
    received_at = least(e.received_at, v.received_at),
    source = CASE WHEN v.received_at < e.received_at THEN v.source ELSE e.source END,
    payload = CASE WHEN v.received_at < e.received_at THEN v.payload ELSE e.payload END
FROM (VALUES %s) AS v(id, n, received_at, source, payload)
WHERE e.id = v.id
"""


def group_by_key(items: list[Incoming]) -> dict[str, list[Incoming]]:
    """Receipts of the same event, first receipt first; keys sorted for lock order."""
    groups: dict[str, list[Incoming]] = defaultdict(list)
    for item in items:
        groups[item.key].append(item)
    return {key: sorted(groups[key], key=lambda i: (i.received_at, i.receipt_id)) for key in sorted(groups)}


def write_batch(cur, groups: dict[str, list[Incoming]]) -> dict[str, int]:
    """Record every event and receipt, apply handlers to new processed events.

    Returns counts by status of the events that were new.
    """
    rows = []
    for key, receipts in groups.items():
        first = receipts[0]
        rows.append((key, first.source, first.name, first.created_at, first.sent_at, first.received_at,
                     len(receipts), Json(first.body), first.status, first.error))
    execute_values(cur, _INSERT_EVENTS, rows, page_size=len(rows))
    ids = dict((key, event_id) for event_id, key in cur.fetchall())
    new_keys = set(ids)
    old_keys = [key for key in groups if key not in ids]
    if old_keys:
        cur.execute("SELECT event_key, id FROM events WHERE event_key = ANY(%s)", (old_keys,))
        ids.update(cur.fetchall())

    receipts = sorted((i.receipt_id, ids[key], i.received_at) for key, group in groups.items() for i in group)
    execute_values(cur, "INSERT INTO receipts (id, event_id, received_at) VALUES %s ON CONFLICT DO NOTHING"
                        " RETURNING event_id", receipts, page_size=len(receipts))
    fresh: dict[int, int] = defaultdict(int)
    for (event_id,) in cur.fetchall():
        fresh[event_id] += 1
    updates = []
    for key in old_keys:
        event_id = ids[key]
        if fresh.get(event_id):
            first = groups[key][0]
            updates.append((event_id, fresh[event_id], first.received_at, first.source, Json(first.body)))
    if updates:
        # Row locks in id order first: UPDATE ... FROM may visit rows in any order,
        # and two batches updating the same events must not lock them crosswise.
        # NO KEY UPDATE (what the UPDATE takes anyway) does not conflict with the
        # KEY SHARE locks that other batches' receipts take through their foreign key.
        cur.execute("SELECT id FROM events WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
                    ([u[0] for u in updates],))
        execute_values(cur, _COUNT_RECEIPTS, updates,
                       template="(%s::bigint, %s::int, %s::timestamptz, %s::text, %s::jsonb)", page_size=len(updates))

    counts: dict[str, int] = defaultdict(int)
    stored = []
    for key in sorted(new_keys):
        first = groups[key][0]
        counts[first.status] += 1
        if first.status == "processed":
            stored.append((first.handler, StoredEvent(ids[key], key, first.event)))
    apply_handlers(cur, stored)
    return dict(counts)


def apply_handlers(cur, stored: list[tuple[Handler, StoredEvent]]) -> None:
    """Each handler once with all its events, handlers always in the same order
    (by name) so that concurrent batches take their locks in one order."""
    by_handler: dict[Handler, list[StoredEvent]] = defaultdict(list)
    for handler, event in stored:
        by_handler[handler].append(event)
    for handler in sorted(by_handler, key=lambda h: h.name):
        handler.apply(cur, by_handler[handler])
