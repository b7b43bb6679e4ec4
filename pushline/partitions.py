"""Monthly partitions of `events`, created ahead of time (migration 0009).

Every instant already has a partition (events_before, the months, events_after),
so a batch never runs DDL and no date can stop it. This only moves the edge of
the monthly range forward so that the coming months get tables of their own;
if it cannot run for a while, their events wait in events_after and are moved
by the next run.
"""

from __future__ import annotations

import logging

import psycopg2

from pushline.db import DDL_LOCK_TIMEOUT, Timeouts, connect

log = logging.getLogger(__name__)

MONTHS_AHEAD = 3
# Well below a worker's stall limit: the roll runs in a worker's housekeeping.
ROLL = Timeouts(statement_ms=60_000, lock_ms=5_000, idle_in_transaction_ms=60_000)


def roll(url: str, months_ahead: int = MONTHS_AHEAD) -> int | None:
    """Create the monthly partitions up to `months_ahead` months from now.

    Returns how many were created, or None when a lock could not be had in
    time (a long query on events_after): the next run tries again.
    """
    conn = connect(url, "pushline-partitions", ROLL)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
            cur.execute("SELECT pushline_roll_partitions(%s)", (months_ahead,))
            made = cur.fetchone()[0]
    except psycopg2.errors.LockNotAvailable:
        log.warning("partitions: events_after is busy; monthly partitions not rolled forward this time")
        return None
    finally:
        conn.close()
    if made:
        log.info("partitions: created %d monthly partitions ahead of time", made)
    return made
