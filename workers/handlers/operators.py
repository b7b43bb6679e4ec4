"""operator.login / operator.logout -> operator_sessions.

Pairing depends on the order of an operator's events, so it is recomputed,
not merged: under the operator's advisory lock, the sessions from the window
start onwards are deleted and paired again from operator_events. The window
start is the last login before the earliest new event (else that event's
time), but never before the operator's retention horizon. Older sessions are
final and never deleted, which keeps the work per batch small.

Retention (`pushline prune`) deletes old logins/logouts from operator_events
and records per operator a horizon in operator_horizons: its last login
before the cut (the cut itself when it had none), from which on its
logins/logouts are kept. Sessions that began before the horizon are final. A
login or logout created before the horizon that arrives after the prune is
stored in `events` (and operator_events) but changes no session: pairing it
would need the pruned events. One thing still crosses the window start: the
session open just before it (its login is before the window) takes its
`logout_at` from the window's events, as pairing says: the window's first
instant closes it if a logout is there, else it stays open. Without a
horizon that is what the row holds already; with one, it lets a logout at
the horizon itself close the session still open before it.
"""

from __future__ import annotations

from itertools import groupby

from pushline.pgarrays import array
from pushline.pgcopy import copy_rows, stage_rows
from workers.registry import StoredEvent, registry
from workers.sessions import pair_sessions

# Per operator: the window start w (the last login before the earliest new
# event, else that event's time, but not before the operator's horizon), the
# last login m before w, the logout of m's session (the one row at m that has
# one, if duplicate logins made several) and whether that session is still
# open just before w (no logout before w).
_WINDOWS = """
WITH o(operator_id, t0) AS (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[])),
w AS (
    SELECT o.operator_id,
           greatest(coalesce((SELECT max(s.login_at) FROM operator_sessions s
                              WHERE s.operator_id = o.operator_id AND s.login_at < o.t0), o.t0),
                    (SELECT h.since FROM operator_horizons h WHERE h.operator_id = o.operator_id)) AS w
    FROM o
),
m AS (
    SELECT w.operator_id, w.w,
           (SELECT max(s.login_at) FROM operator_sessions s
            WHERE s.operator_id = w.operator_id AND s.login_at < w.w) AS m
    FROM w
),
ml AS (
    SELECT m.*,
           (SELECT s.logout_at FROM operator_sessions s WHERE s.operator_id = m.operator_id AND s.login_at = m.m
            ORDER BY s.logout_at NULLS LAST LIMIT 1) AS m_logout
    FROM m
)
SELECT operator_id, w, m IS NOT NULL AND (m_logout IS NULL OR m_logout >= w) AS open_before, m, m_logout
FROM ml
ORDER BY operator_id
"""

_DELETE = """
DELETE FROM operator_sessions s
USING unnest(%s::bigint[], %s::timestamptz[]) AS x(operator_id, w)
WHERE s.operator_id = x.operator_id
  AND (s.login_at >= x.w OR (s.login_at IS NULL AND s.logout_at >= x.w))
"""

_WINDOW_EVENTS = """
SELECT e.operator_id, e.at, e.kind
FROM operator_events e
JOIN unnest(%s::bigint[], %s::timestamptz[]) AS x(operator_id, w)
  ON e.operator_id = x.operator_id AND e.at >= x.w
ORDER BY e.operator_id, e.at
"""

# The session open before the window gets the logout the window gives it.
_CLOSE_BEFORE = """
UPDATE operator_sessions s SET logout_at = c.logout_at
FROM (SELECT DISTINCT ON (o.operator_id) o.id, x.logout_at
      FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS x(operator_id, login_at, logout_at)
      JOIN operator_sessions o ON o.operator_id = x.operator_id AND o.login_at = x.login_at
      ORDER BY o.operator_id, o.logout_at NULLS LAST) AS c
WHERE s.id = c.id
"""


def _closes_open_session(events: list[tuple]):
    """When a session is open before these (sorted) events: the time that closes
    it, i.e. the first instant if a logout is there (logouts go first), else None."""
    if events and any(kind == "logout" for at, kind in events if at == events[0][0]):
        return events[0][0]
    return None


@registry.handles("operator.login", "operator.logout")
def apply(cur, events: list[StoredEvent]) -> None:
    stage_rows(cur, "stage_operator_events", ("event_id", "operator_id", "at", "kind"), (
        (s.id, s.event.parameters["operator_id"], s.event.created, s.event.name.removeprefix("operator."))
        for s in events
    ))
    cur.execute("""INSERT INTO operator_events (event_id, operator_id, at, kind)
                   SELECT event_id, operator_id, at, kind FROM stage_operator_events ORDER BY event_id
                   ON CONFLICT DO NOTHING""")
    earliest: dict[int, object] = {}
    for s in events:
        op = s.event.parameters["operator_id"]
        earliest[op] = min(earliest.get(op, s.event.created), s.event.created)
    operators = sorted(earliest)
    cur.execute("SELECT pushline_lock_operators(%s::bigint[])", (array(operators),))

    cur.execute(_WINDOWS, (array(operators), array(earliest[op] for op in operators)))
    windows = cur.fetchall()
    ops = array(op for op, *_ in windows)
    starts = array(w for _, w, *_ in windows)
    cur.execute(_DELETE, (ops, starts))
    cur.execute(_WINDOW_EVENTS, (ops, starts))
    by_operator = {op: [(at, kind) for _, at, kind in rows] for op, rows in groupby(cur.fetchall(), key=lambda r: r[0])}

    sessions, closes = [], []
    for op, _, open_before, m, m_logout in windows:
        events_of = by_operator.get(op, [])
        sessions += [(op, login, logout) for login, logout in pair_sessions(events_of, open_before)]
        if open_before and (close := _closes_open_session(events_of)) != m_logout:
            closes.append((op, m, close))
    if closes:
        cur.execute(_CLOSE_BEFORE, tuple(map(array, zip(*closes, strict=True))))
    if sessions:
        copy_rows(cur, "operator_sessions", ("operator_id", "login_at", "logout_at"), sessions)
