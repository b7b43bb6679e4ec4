"""operator.login / operator.logout -> operator_sessions.

Pairing depends on the order of an operator's events, so it is recomputed,
not merged: under the operator's advisory lock, the sessions from the last
login before the earliest new event onwards are deleted and paired again from
operator_events. Older sessions are final and never touched, which keeps the
work per batch small and survives retention of old events.
"""

from __future__ import annotations

from itertools import groupby

from pushline.pgcopy import copy_rows, stage_rows
from workers.registry import StoredEvent, registry
from workers.sessions import pair_sessions

# Per operator: the window start w (last login before the earliest new event,
# else that event's time) and whether a session is still open just before w
# (the latest session before w has no logout before w).
_WINDOWS = """
WITH o(operator_id, t0) AS (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[])),
w AS (
    SELECT o.operator_id,
           coalesce((SELECT max(s.login_at) FROM operator_sessions s
                     WHERE s.operator_id = o.operator_id AND s.login_at < o.t0), o.t0) AS w
    FROM o
),
m AS (
    SELECT w.operator_id, w.w,
           (SELECT max(s.login_at) FROM operator_sessions s
            WHERE s.operator_id = w.operator_id AND s.login_at < w.w) AS m
    FROM w
)
SELECT m.operator_id, m.w,
       m.m IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM operator_sessions s
           WHERE s.operator_id = m.operator_id AND s.login_at = m.m AND s.logout_at < m.w) AS open_before
FROM m
ORDER BY m.operator_id
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
    cur.execute("SELECT pushline_lock_operators(%s::bigint[])", (operators,))

    cur.execute(_WINDOWS, (operators, [earliest[op] for op in operators]))
    windows = cur.fetchall()
    ops = [op for op, _, _ in windows]
    starts = [w for _, w, _ in windows]
    cur.execute(_DELETE, (ops, starts))
    cur.execute(_WINDOW_EVENTS, (ops, starts))
    by_operator = {op: [(at, kind) for _, at, kind in rows] for op, rows in groupby(cur.fetchall(), key=lambda r: r[0])}

    sessions = []
    for op, _, open_before in windows:
        sessions += [(op, login, logout) for login, logout in pair_sessions(by_operator.get(op, []), open_before)]
    if sessions:
        copy_rows(cur, "operator_sessions", ("operator_id", "login_at", "logout_at"), sessions)
