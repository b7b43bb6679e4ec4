"""Writing a batch: events with their receipts, then the handlers, in one transaction.

Rows go through COPY into a staging table and are merged with set-based SQL,
sorted by key so that concurrent batches take row locks in one order.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from psycopg2.extras import execute_values

from pushline.jsonvalues import dumps_exact
from pushline.pgarrays import array
from pushline.pgcopy import RawJSON, stage_rows
from schemas.webhooks import is_webhook
from workers.intake import Incoming, parse_json
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
    rows = []
    for key, receipts in groups.items():
        first, ids = receipts[0], _receipt_ids(receipts)
        rows.append((key, first.source, first.name, first.created_at, first.sent_at, first.received_at, len(ids),
                     ids, _payload(first), first.status, first.error))
    stage_rows(cur, "stage_events", _EVENT_COLUMNS, rows)
    _keep_stored_instants(cur, groups)
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


# A webhook's eventId is claimed (webhook_event_ids, one row per eventId, with the
# instant its row in `events` has) in the batch that stores it first. The claim,
# not a lookup in `events`, tells a new eventId from a stored one: `events` is
# unique by (event_key, created_at) only, and a lookup by event_key alone probes
# every partition. Claimed from the staged events, sorted, so that concurrent
# batches take the rows in one order; a batch that meets another's uncommitted
# claim waits for its commit.
_CLAIM = """
INSERT INTO webhook_event_ids (event_key, created_at)
SELECT event_key, s.created_at FROM stage_events s JOIN unnest(%s::uuid[]) AS k(event_key) USING (event_key)
ORDER BY 1
ON CONFLICT (event_key) DO NOTHING
"""
# Claims of these keys (claimed before) at another instant than the staged one.
_CLAIMED_ELSEWHEN = """
SELECT replace(event_key::text, '-', ''), c.created_at
FROM unnest(%s::uuid[]) AS k(event_key) JOIN stage_events s USING (event_key) JOIN webhook_event_ids c USING (event_key)
WHERE c.created_at IS DISTINCT FROM s.created_at
ORDER BY event_key {lock}
"""
# Claims whose row is in `events` at the claimed instant. Each probe is a
# parameterized lookup: PostgreSQL opens the one partition of that instant.
_STORED_AT_CLAIM = """
SELECT replace(c.key::text, '-', '') FROM unnest(%s::uuid[], %s::timestamptz[]) AS c(key, at)
WHERE EXISTS (SELECT FROM events e WHERE e.event_key = c.key AND e.created_at = c.at)
   OR (c.at IS NULL AND EXISTS (SELECT FROM events e WHERE e.event_key = c.key AND e.created_at IS NULL))
"""
# The staged row takes the stored instant; the claim whose row is gone, the staged one.
_TAKE_CLAIMED = """
UPDATE stage_events s SET created_at = c.created_at FROM webhook_event_ids c
WHERE s.event_key = c.event_key AND c.event_key = ANY(%s::uuid[])
"""
_RECLAIM = """
UPDATE webhook_event_ids c SET created_at = s.created_at FROM stage_events s
WHERE c.event_key = s.event_key AND c.event_key = ANY(%s::uuid[])
"""


def _keep_stored_instants(cur, groups: dict[str, list[Incoming]]) -> None:
    """A webhook is its eventId (CONTRACT 7), whatever its createdAt says. Rows are
    unique by (event_key, created_at), the partition key being part of every
    unique index; so a receipt of a stored eventId whose createdAt differs takes
    the stored instant and counts as one more delivery of that row instead of
    making a second.

    One statement when every eventId is new (the claims), or comes again with
    the claimed instant. A claimed eventId whose claim says another instant:
    its claim row is locked (two batches never both decide), and the staged
    row takes the claimed instant when `events` holds that row; when it does
    not (the row was pruned, or `events` emptied), the claim takes the staged
    instant instead."""
    keys = [key for key, receipts in groups.items() if _claims_event_id(receipts[0])]
    if not keys:
        return
    cur.execute(_CLAIM, (array(keys),))
    if cur.rowcount == len(keys):
        return
    cur.execute(_CLAIMED_ELSEWHEN.format(lock=""), (array(keys),))
    other = [key for key, _ in cur.fetchall()]
    if not other:
        return
    cur.execute(_CLAIMED_ELSEWHEN.format(lock="FOR UPDATE OF c"), (array(other),))  # again, locked: as they are now
    claimed = dict(cur.fetchall())
    if not claimed:
        return
    cur.execute(_STORED_AT_CLAIM, (array(claimed), array(claimed.values())))
    stored = [key for key, in cur.fetchall()]
    if stored:
        cur.execute(_TAKE_CLAIMED, (array(stored),))
        for key in stored:
            groups[key][0].created_at = claimed[key]
    stale = sorted(claimed.keys() - set(stored))
    if stale:
        cur.execute(_RECLAIM, (array(stale),))


def _claims_event_id(first: Incoming) -> bool:
    """The receipt is a webhook with an eventId, or the minimal row that stands for
    one PostgreSQL would not take as it was (Incoming.as_unstorable)."""
    if first.webhook_id:
        return True
    body = first.body
    if isinstance(body, dict) and isinstance(body.get("unstorable_body"), str):
        try:
            original = parse_json(body["unstorable_body"])
        except Exception:  # what PostgreSQL refused may not read back either
            return False
        return isinstance(original, dict) and is_webhook(original) and isinstance(original.get("eventId"), str)
    return False


def _add_receipts(cur, groups: dict[str, list[Incoming]], old_keys: list[str]) -> None:
    # Row locks in id order first: UPDATE ... FROM may visit rows in any order,
    # and two batches adding receipts to the same events must not lock them crosswise.
    cur.execute("""SELECT id, replace(event_key::text, '-', ''), receipt_ids FROM events
                   WHERE event_key = ANY(%s::uuid[]) ORDER BY id FOR NO KEY UPDATE""", (array(old_keys),))
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
