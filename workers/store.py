"""Writing a batch: events with their receipts, then the handlers, in one transaction.

Rows go through COPY into a staging table and are merged with set-based SQL,
sorted by key so that concurrent batches take row locks in one order.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from psycopg2.extras import execute_values

from pushline.jsonvalues import dumps_exact
from pushline.pgcopy import RawJSON, stage_rows
from workers.intake import Incoming
from workers.registry import Handler, StoredEvent

log = logging.getLogger(__name__)

_EVENT_COLUMNS = ("event_key", "source", "name", "created_at", "sent_at", "received_at", "deliveries",
                  "receipt_ids", "payload", "status", "error")

_INSERT_EVENTS = f"""
INSERT INTO events ({", ".join(_EVENT_COLUMNS)})
SELECT {", ".join(_EVENT_COLUMNS)} FROM stage_events ORDER BY event_key
ON CONFLICT (event_key, created_at) DO NOTHING
RETURNING id, event_key::text
"""

# More receipts of an event stored before. Only receipt ids it does not hold
# yet count, so a queue item delivered twice (a worker died after its commit,
# before its ack) adds nothing: never `deliveries + n` blindly.
_ADD_RECEIPTS = """
UPDATE events e SET
    receipt_ids = e.receipt_ids || v.fresh,
    deliveries = e.deliveries + cardinality(v.fresh),
    received_at = least(e.received_at, v.received_at),
    source = CASE WHEN v.received_at < e.received_at THEN v.source ELSE e.source END,
    payload = CASE WHEN v.received_at < e.received_at THEN v.payload ELSE e.payload END
FROM (VALUES %s) AS v(id, fresh, received_at, source, payload)
WHERE e.id = v.id
"""


def group_by_key(items: list[Incoming]) -> dict[str, list[Incoming]]:
    """Receipts of the same event, first receipt first; keys sorted for lock order."""
    groups: dict[str, list[Incoming]] = defaultdict(list)
    for item in items:
        groups[item.key].append(item)
    return {key: sorted(groups[key], key=lambda i: (i.received_at, i.receipt_id)) for key in sorted(groups)}


def _payload(item: Incoming):
    return RawJSON(item.raw) if item.raw is not None else item.body


def _payload_text(item: Incoming) -> str:
    return item.raw if item.raw is not None else dumps_exact(item.body)


def _receipt_ids(receipts: list[Incoming]) -> list[str]:
    return list(dict.fromkeys(i.receipt_id for i in receipts))  # the same item twice in one batch counts once


def write_batch(cur, groups: dict[str, list[Incoming]]) -> dict[tuple[str, str], int]:
    """Record every event and receipt, apply handlers to new processed events.

    Returns counts by (name, status) of the events that were new.
    """
    _keep_stored_instants(cur, groups)
    rows = []
    for key, receipts in groups.items():
        first, ids = receipts[0], _receipt_ids(receipts)
        rows.append((key, first.source, first.name, first.created_at, first.sent_at, first.received_at, len(ids),
                     ids, _payload(first), first.status, first.error))
    stage_rows(cur, "stage_events", _EVENT_COLUMNS, rows)
    cur.execute(_INSERT_EVENTS)
    new_ids = {key.replace("-", ""): event_id for event_id, key in cur.fetchall()}
    old_keys = [key for key in groups if key not in new_ids]
    if old_keys:
        _add_receipts(cur, groups, old_keys)

    counts: dict[tuple[str, str], int] = defaultdict(int)
    stored = []
    for key, event_id in new_ids.items():
        first = groups[key][0]
        counts[first.name, first.status] += 1
        if first.status != "processed":
            log.info("event stored as %s", first.status, extra={
                "event_id": event_id, "event_key": key, "event_name": first.name, "error": first.error,
                "receipt_ids": [i.receipt_id for i in groups[key]]})
        if first.status == "processed":
            stored.append((first.handler, StoredEvent(event_id, key, first.event)))
    apply_handlers(cur, stored)
    return dict(counts)


def _keep_stored_instants(cur, groups: dict[str, list[Incoming]]) -> None:
    """A webhook is its eventId (CONTRACT 7), whatever its createdAt says. Rows are
    unique by (event_key, created_at), the partition key being part of every
    unique index; so a receipt of a stored eventId whose createdAt differs takes
    the stored instant and counts as one more delivery of that row instead of
    making a second. One lookup per batch, and only for webhooks."""
    webhook_keys = [key for key, receipts in groups.items() if receipts[0].webhook_id]
    if not webhook_keys:
        return
    cur.execute("SELECT replace(event_key::text, '-', ''), created_at FROM events WHERE event_key = ANY(%s::uuid[])",
                (webhook_keys,))
    for key, created_at in cur.fetchall():
        first = groups[key][0]
        if first.created_at != created_at:
            first.created_at = created_at


def _add_receipts(cur, groups: dict[str, list[Incoming]], old_keys: list[str]) -> None:
    # Row locks in id order first: UPDATE ... FROM may visit rows in any order,
    # and two batches adding receipts to the same events must not lock them crosswise.
    cur.execute("""SELECT id, replace(event_key::text, '-', ''), receipt_ids FROM events
                   WHERE event_key = ANY(%s::uuid[]) ORDER BY id FOR NO KEY UPDATE""", (old_keys,))
    updates = []
    for event_id, key, known in cur.fetchall():
        fresh = [r for r in _receipt_ids(groups[key]) if r not in set(known)]
        if fresh:
            first = groups[key][0]
            # The body's own text, as for the insert: re-encoding the parsed body
            # would turn a number like 1e400 into `Infinity`, which is not JSON.
            updates.append((event_id, fresh, first.received_at, first.source, _payload_text(first)))
    if updates:
        execute_values(cur, _ADD_RECEIPTS, updates,
                       template="(%s::bigint, %s::text[], %s::timestamptz, %s::text, %s::jsonb)",
                       page_size=len(updates))


def apply_handlers(cur, stored: list[tuple[Handler, StoredEvent]]) -> None:
    """Each handler once with all its events, handlers always in the same order
    (by name) so that concurrent batches take their locks in one order."""
    by_handler: dict[Handler, list[StoredEvent]] = defaultdict(list)
    for handler, event in stored:
        by_handler[handler].append(event)
    for handler in sorted(by_handler, key=lambda h: h.name):
        handler.apply(cur, by_handler[handler])
