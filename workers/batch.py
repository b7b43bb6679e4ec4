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

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field

from pushline.db import TRANSIENT_ERRORS
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
    counts, unstorable = _store(conn, group_by_key(incoming))
    if unstorable:
        raw_by_receipt = {item.receipt_id: raw for raw, item in pairs}
        for group, reason in unstorable:
            dead += [(raw_by_receipt[receipt], reason) for receipt in dict.fromkeys(i.receipt_id for i in group)]
    return BatchResult(counts, oldest, dead)


def _store(conn, groups: dict[str, list[Incoming]]) -> tuple[Counter, list[tuple[list[Incoming], str]]]:
    if not groups:
        return Counter(), []
    try:
        with conn.cursor() as cur:
            counts = Counter(write_batch(cur, groups))
        conn.commit()
        return counts, []
    except TRANSIENT_ERRORS:
        conn.rollback()
        raise
    except Exception:
        conn.rollback()
        log.warning("batch of %d events failed; isolating the one at fault", len(groups), exc_info=True)
    return _one_by_one(conn, groups)


def _one_by_one(conn, groups: dict[str, list[Incoming]]) -> tuple[Counter, list[tuple[list[Incoming], str]]]:
    counts: Counter = Counter()
    unstorable = []
    with conn.cursor() as cur:
        for key, group in groups.items():
            cur.execute("SAVEPOINT one_event")
            try:
                counts.update(write_batch(cur, {key: group}))
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                cur.execute("ROLLBACK TO SAVEPOINT one_event")
                reason = _reason("handler" if group[0].status == "processed" else "store", exc)
                log.error("event rejected: it could not be stored as it is", extra={
                    "event_key": key, "receipt_ids": [i.receipt_id for i in group], "error": reason})
                for item in group:
                    item.reject(reason)
                try:
                    counts.update(write_batch(cur, {key: group}))
                except TRANSIENT_ERRORS:
                    raise
                except Exception as again:
                    cur.execute("ROLLBACK TO SAVEPOINT one_event")
                    reason = f"{reason}; then, stored as rejected: {_reason('store', again)}"
                    log.error("event dead-lettered: it cannot be stored even as rejected", extra={
                        "event_key": key, "receipt_ids": [i.receipt_id for i in group], "error": reason})
                    unstorable.append((group, reason))
            cur.execute("RELEASE SAVEPOINT one_event")
    conn.commit()
    return counts, unstorable
