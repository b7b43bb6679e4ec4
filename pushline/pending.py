"""How long the oldest accepted event has waited to be stored (CONTRACT 3, 6).

A 202 is a promise: until its event is in `events`, it waits in the queue, in
a claimed batch, among the suspects, struck or dead letters (Redis) or in the
spool (PostgreSQL). The age of the oldest of them is the one figure that tells
a stalled pipeline from a quiet one: 0 when nothing waits, growing otherwise.
"""

from __future__ import annotations

import time

from pushline.queue import EventQueue

SPOOL_OLDEST = "SELECT pushline_spool_oldest()"


def oldest_pending_seconds(queue: EventQueue, spool_oldest: float | None, now: float | None = None) -> float:
    """`spool_oldest`: the result of SPOOL_OLDEST (None when the spool is empty or unknown)."""
    times = [t for t in (queue.oldest_pending_received_at(), spool_oldest) if t is not None]
    now = time.time() if now is None else now
    return round(max(0.0, now - min(times)), 3) if times else 0.0


def stalled_workers(states: dict[str, dict], stall_seconds: float, now: float | None = None) -> list[str]:
    """Workers whose last progress is older than `stall_seconds`."""
    now = time.time() if now is None else now
    return sorted(w for w, s in states.items() if now - float(s.get("last_progress", 0)) > stall_seconds)
