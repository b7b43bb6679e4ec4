"""One batch: classify, write in one transaction, isolate a poison event.

A handler error that is not transient (the database is fine, the event is
not) must not block the batch: the batch is written again event by event,
each under a savepoint, and the event whose handler fails is stored as
`rejected` with the reason. Transient database errors propagate, so the
caller retries the whole batch later.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass

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


def process_items(conn, items: list[bytes], registry: Registry, tz: dt.tzinfo | str,
                  max_custom_data_keys: int | None = None, reject: str | None = None) -> BatchResult:
    """Store queue items in one transaction; with `reject`, store them rejected
    with that reason and run no handler."""
    with push_timezone(tz, max_custom_data_keys):
        incoming = [read_item(raw, registry) for raw in items]
    if reject:
        for item in incoming:
            item.reject(reject)
    oldest = min((i.received_at for i in incoming), default=None)
    return BatchResult(_store(conn, group_by_key(incoming)), oldest)


def _store(conn, groups: dict[str, list[Incoming]]) -> Counter:
    try:
        with conn.cursor() as cur:
            counts = Counter(write_batch(cur, groups))
        conn.commit()
        return counts
    except TRANSIENT_ERRORS:
        conn.rollback()
        raise
    except Exception:
        conn.rollback()
        log.warning("batch of %d events failed in a handler; isolating the one at fault", len(groups), exc_info=True)
    return _one_by_one(conn, groups)


def _one_by_one(conn, groups: dict[str, list[Incoming]]) -> Counter:
    counts: Counter = Counter()
    with conn.cursor() as cur:
        for key, group in groups.items():
            cur.execute("SAVEPOINT one_event")
            try:
                counts.update(write_batch(cur, {key: group}))
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                cur.execute("ROLLBACK TO SAVEPOINT one_event")
                first_line = (str(exc).strip().splitlines() or [""])[0]
                reason = f"handler: {type(exc).__name__}: {first_line}"
                log.error("event rejected by its handler", extra={
                    "event_key": key, "receipt_ids": [i.receipt_id for i in group], "error": reason})
                for item in group:
                    item.reject(reason)
                counts.update(write_batch(cur, {key: group}))
            cur.execute("RELEASE SAVEPOINT one_event")
    conn.commit()
    return counts
