"""One batch: classify, write in one transaction, isolate what cannot be written.

Transient database errors (the server went away, a timeout, a deadlock)
propagate, so that the caller retries the whole batch later. Any other error
is the data's, not the database's: the batch is written again event by event,
each under a savepoint; an event that fails is stored `rejected` with the
reason; an event that cannot even be stored rejected (or an item that is not
an envelope) comes back as a dead letter, for the caller to park. Nothing one
item holds can stop the items behind it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field

import psycopg2

from pushline.db import is_transient
from schemas import push_timezone
from workers.intake import Incoming, read_item
from workers.registry import Registry
from workers.store import group_by_key, write_batch

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    counts: Counter  # new events by (name, status)
    oldest_receipt: dt.datetime | None
    dead: list[tuple[bytes, str]] = field(default_factory=list)  # (queue item, reason): could not be stored


def _reason(prefix: str, exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0][:500]
    return f"{prefix}: {type(exc).__name__}: {first_line}"


def process_items(conn, items: list[bytes], registry: Registry, tz: dt.tzinfo | str,
                  max_custom_data_keys: int | None = None, reject: str | None = None) -> BatchResult:
    """Store queue items in one transaction; with `reject`, store them rejected
    with that reason and run no handler."""
    pairs, dead = [], []
    with push_timezone(tz, max_custom_data_keys):
        for raw in items:
            try:
                pairs.append((raw, read_item(raw, registry)))
            except Exception as exc:  # not even an envelope: nothing to store it as
                dead.append((raw, _reason("envelope", exc)))
    incoming = [item for _, item in pairs]
    if reject:
        for item in incoming:
            item.reject(reject)
    oldest = min((i.received_at for i in incoming), default=None)
    counts, unstorable = _in_one_transaction(conn, group_by_key(incoming))
    if unstorable:
        raw_by_receipt = {item.receipt_id: raw for raw, item in pairs}
        for group, reason in unstorable:
            dead += [(raw_by_receipt[receipt], reason) for receipt in dict.fromkeys(i.receipt_id for i in group)]
    return BatchResult(counts, oldest, dead)


def _in_one_transaction(conn, groups: dict[str, list[Incoming]]) -> tuple[Counter, list[tuple[list[Incoming], str]]]:
    if not groups:
        return Counter(), []
    try:
        with conn.cursor() as cur:
            counts = Counter(write_batch(cur, groups))
        conn.commit()
        return counts, []
    except Exception as exc:
        _rollback(conn)
        if is_transient(exc):
            raise
        log.warning("batch of %d events failed; isolating the one at fault", len(groups), exc_info=True)
    return _one_by_one(conn, groups)


def _rollback(conn) -> None:
    with contextlib.suppress(psycopg2.Error):  # the connection is gone; the caller drops it
        conn.rollback()


def _try(cur, counts: Counter, groups: dict[str, list[Incoming]], prefix: str = "store") -> bool | str:
    """Write under the current savepoint: True, or why it failed (rolled back to the savepoint)."""
    try:
        counts.update(write_batch(cur, groups))
        return True
    except Exception as exc:
        if is_transient(exc):
            raise
        cur.execute("ROLLBACK TO SAVEPOINT one_event")
        return _reason(prefix, exc)


def _one_by_one(conn, groups: dict[str, list[Incoming]]) -> tuple[Counter, list[tuple[list[Incoming], str]]]:
    """Each event under a savepoint: as it is; else rejected with the reason; else, last
    resort, as a minimal row keeping the body as a JSON string with what PostgreSQL
    refuses replaced (so that the 202 still ends in `events`); else parked."""
    counts: Counter = Counter()
    unstorable = []
    with conn.cursor() as cur:
        for key, group in groups.items():
            cur.execute("SAVEPOINT one_event")
            prefix = "handler" if group[0].status == "processed" else "store"
            reason = _try(cur, counts, {key: group}, prefix)
            if reason is not True:
                log.error("event rejected: it could not be stored as it is", extra={
                    "event_key": key, "receipt_ids": [i.receipt_id for i in group], "error": reason})
                for item in group:
                    item.reject(reason)
                failed = _try(cur, counts, {key: group})
                if failed is not True:
                    reason = f"{reason}; as rejected: {failed}"
                    failed = _try(cur, counts, {key: [item.as_unstorable(reason) for item in group]})
                if failed is not True:
                    reason = f"{reason}; as a minimal row: {failed}"
                    log.error("event dead-lettered: it cannot be stored even as a minimal row", extra={
                        "event_key": key, "receipt_ids": [i.receipt_id for i in group], "error": reason})
                    unstorable.append((group, reason))
            cur.execute("RELEASE SAVEPOINT one_event")
    conn.commit()
    return counts, unstorable
