"""Today's webhooks (CONTRACT 7) -> conversations_v2, conversation_assignments,
satisfaction, user_sessions, availability_periods.

Each table is a function of the SET of distinct events, in the order
(createdAt as an instant, then eventId as text). Merging events into rows as
they come cannot give that (a late event may change which one is "earliest",
or split an availability run), so every batch:

1. locks, in one sorted statement, the webhook_locks row of every
   conversation and user it touches. Row locks rather than advisory locks:
   they live in the tuples, so a batch of thousands of conversations, or a
   rebuild (one transaction over every event), never fills the shared lock
   table (max_locks_per_transaction x max_connections entries). Every batch
   takes them in the same order (kind, key), so batches never deadlock; a
   batch that waited recomputes after the other committed, and its next
   statement (READ COMMITTED) sees that batch's side rows;
2. records each event's fields in a side table keyed by its eventId (the
   event's identity: a retry repeats its fields; should one eventId ever come
   with other fields, the first stored stays), ON CONFLICT DO NOTHING, so that
   a redelivery or a replay adds nothing;
3. recomputes the rows of those conversations and users from the side tables
   with set-based SQL.

One handler for the six types, so that one lock statement covers them all:
locks taken by several handlers in turn could be taken crosswise.

Conversations and satisfaction hold a few events each and are recomputed
whole. Sessions and availability runs are recomputed from a window: from the
batch's earliest event of the user (sessions) or from the start of the run
holding the event just before it (availability); everything before a window
is final, because pairing and runs depend only on what came before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

from pushline.pgcopy import copy_rows
from workers.registry import StoredEvent, registry
from workers.sessions import pair_sessions

PUSHED, CLOSED = "v2.conversation.pushed", "v2.conversation.closed"
CONNECTED, DISCONNECTED = "user.connected", "user.disconnected"
AVAILABILITY, SATISFACTION = "user.availability.updated", "satisfaction.answered"
_ANSWERS = ("customer_satisfaction", "net_promoter_score", "satisfaction_comment")

# Staging tables like the side tables (LIKE keeps them in step), per session,
# emptied at commit; see pushline.pgcopy.
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_webhook_conversation_events (LIKE webhook_conversation_events)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_satisfaction_events (LIKE satisfaction_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_user_events (LIKE user_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_availability_events (LIKE availability_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_availability_windows (
    user_id bigint, channel text, from_at timestamptz, from_event text COLLATE "C"
) ON COMMIT DELETE ROWS;
"""

_CONVERSATION_COLUMNS = ("event_uuid", "event_id", "conversation_id", "kind", "at", "client_id", "project_id",
                         "channel", "visitor_id", "operator_id", "operator_ids")
_SATISFACTION_COLUMNS = ("event_uuid", "event_id", "conversation_id", "at", *_ANSWERS)
_USER_COLUMNS = ("event_uuid", "event_id", "user_id", "at", "kind")
_AVAILABILITY_COLUMNS = ("event_uuid", "channel", "event_id", "user_id", "at", "status")

# ON CONFLICT DO UPDATE ... WHERE false inserts the missing rows and locks the
# existing ones (as FOR UPDATE would) without writing a new row version. The
# input is sorted: the locks are taken in that order.
_LOCK = """
INSERT INTO webhook_locks (kind, key)
SELECT kind, key FROM unnest(%s::text[], %s::text[]) AS x(kind, key)
ORDER BY kind COLLATE "C", key COLLATE "C"
ON CONFLICT (kind, key) DO UPDATE SET key = excluded.key WHERE false
"""


def _insert_side(table: str, columns: Sequence[str]) -> str:
    cols = ", ".join(columns)
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table} ORDER BY 1 ON CONFLICT DO NOTHING"


# One row per distinct pushed event, whatever else: no recompute needed. Read
# from the side table, so that both say the same when an eventId came twice.
_ASSIGNMENTS = """
INSERT INTO conversation_assignments (event_uuid, conversation_id, operator_id, assigned_at)
SELECT w.event_uuid, w.conversation_id, w.operator_id, w.at
FROM webhook_conversation_events w
WHERE w.event_uuid IN (SELECT event_uuid FROM stage_webhook_conversation_events) AND w.kind = 'pushed'
ORDER BY 1
ON CONFLICT DO NOTHING
"""

# Attributes from the earliest pushed event, else from the latest closed one
# (a whole event's values: a pushed event without visitorId does not borrow a
# closed event's).
_ATTR = "CASE WHEN fp.event_uuid IS NOT NULL THEN fp.{0} ELSE lc.{0} END"
_CONVERSATIONS = f"""
WITH c AS (SELECT DISTINCT conversation_id FROM stage_webhook_conversation_events),
e AS (SELECT w.* FROM webhook_conversation_events w JOIN c USING (conversation_id)),
agg AS (
    SELECT conversation_id,
           min(at) FILTER (WHERE kind = 'pushed') AS started_at,
           max(at) FILTER (WHERE kind = 'closed') AS ended_at,
           count(*) FILTER (WHERE kind = 'pushed') AS assignments
    FROM e GROUP BY conversation_id
),
fp AS (SELECT DISTINCT ON (conversation_id) * FROM e WHERE kind = 'pushed'
       ORDER BY conversation_id, at, event_uuid),
lp AS (SELECT DISTINCT ON (conversation_id) * FROM e WHERE kind = 'pushed'
       ORDER BY conversation_id, at DESC, event_uuid DESC),
lc AS (SELECT DISTINCT ON (conversation_id) * FROM e WHERE kind = 'closed'
       ORDER BY conversation_id, at DESC, event_uuid DESC)
INSERT INTO conversations_v2 (conversation_id, client_id, project_id, channel, visitor_id, operator_id,
                              last_operator_id, operator_ids, assignments, started_at, ended_at)
SELECT agg.conversation_id, {_ATTR.format("client_id")}, {_ATTR.format("project_id")},
       {_ATTR.format("channel")}, {_ATTR.format("visitor_id")},
       fp.operator_id, lp.operator_id, lc.operator_ids, agg.assignments, agg.started_at, agg.ended_at
FROM agg
LEFT JOIN fp USING (conversation_id)
LEFT JOIN lp USING (conversation_id)
LEFT JOIN lc USING (conversation_id)
ORDER BY agg.conversation_id
ON CONFLICT (conversation_id) DO UPDATE SET
    client_id = excluded.client_id, project_id = excluded.project_id, channel = excluded.channel,
    visitor_id = excluded.visitor_id, operator_id = excluded.operator_id,
    last_operator_id = excluded.last_operator_id, operator_ids = excluded.operator_ids,
    assignments = excluded.assignments, started_at = excluded.started_at, ended_at = excluded.ended_at
"""

# Each answer from the latest event carrying it (only such events are kept).
_LATEST = "(array_agg({0} ORDER BY at DESC, event_uuid DESC) FILTER (WHERE {0} IS NOT NULL))[1]"
_SATISFACTION = f"""
INSERT INTO satisfaction (conversation_id, {", ".join(f"{a}, {a}_at" for a in _ANSWERS)})
SELECT conversation_id,
       {", ".join(f"{_LATEST.format(a)}, max(at) FILTER (WHERE {a} IS NOT NULL)" for a in _ANSWERS)}
FROM satisfaction_events
WHERE conversation_id IN (SELECT conversation_id FROM stage_satisfaction_events)
GROUP BY conversation_id
ORDER BY conversation_id
ON CONFLICT (conversation_id) DO UPDATE SET
    {", ".join(f"{a} = excluded.{a}, {a}_at = excluded.{a}_at" for a in _ANSWERS)}
"""

# Sessions. The window of a user starts at t0, the batch's earliest event of
# that user: sessions that began before it are final, but for the one open
# just before t0 (its connection is the last one before t0, m), whose end the
# events from t0 on decide. The end of m's session: the one row at m with an
# end, when duplicate connections at m made several rows.
_SESSION_WINDOWS = """
WITH u AS (SELECT user_id, min(at) AS t0 FROM stage_user_events GROUP BY user_id),
m AS (
    SELECT u.user_id, u.t0,
           (SELECT max(s.connected_at) FROM user_sessions s
            WHERE s.user_id = u.user_id AND s.connected_at < u.t0) AS m
    FROM u
)
SELECT m.user_id, m.t0, m.m,
       (SELECT s.disconnected_at FROM user_sessions s WHERE s.user_id = m.user_id AND s.connected_at = m.m
        ORDER BY s.disconnected_at NULLS LAST LIMIT 1) AS m_end
FROM m
ORDER BY m.user_id
"""

_SESSION_WINDOW = "(SELECT user_id, min(at) AS t0 FROM stage_user_events GROUP BY user_id)"

_DELETE_SESSIONS = f"""
DELETE FROM user_sessions s
USING {_SESSION_WINDOW} AS w
WHERE s.user_id = w.user_id
  AND (s.connected_at >= w.t0 OR (s.connected_at IS NULL AND s.disconnected_at >= w.t0))
"""

_WINDOW_EVENTS = f"""
SELECT e.user_id, e.at, e.kind
FROM user_events e
JOIN {_SESSION_WINDOW} AS w ON e.user_id = w.user_id AND e.at >= w.t0
ORDER BY e.user_id, e.at
"""

# The session open before the window gets the end the window gives it.
_CLOSE_BEFORE = """
UPDATE user_sessions s SET disconnected_at = c.disconnected_at
FROM (SELECT DISTINCT ON (o.user_id) o.id, x.disconnected_at
      FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS x(user_id, connected_at, disconnected_at)
      JOIN user_sessions o ON o.user_id = x.user_id AND o.connected_at = x.connected_at
      ORDER BY o.user_id, o.disconnected_at NULLS LAST) AS c
WHERE s.id = c.id
"""

# Availability runs, per user and channel. The window starts at the run
# holding the event just before the batch's earliest event of that channel
# (no such run: the whole history). That run's first event still starts a run
# (the event before it has another status), so the runs before the window,
# their ends included, stay as they are; the window's runs are recomputed
# (gaps and islands: a run starts where the status changes).
_AVAILABILITY = """
DELETE FROM stage_availability_windows;
INSERT INTO stage_availability_windows (user_id, channel, from_at, from_event)
SELECT x.user_id, x.channel, p.from_at, p.from_event
FROM (SELECT DISTINCT ON (user_id, channel) user_id, channel, at, event_uuid FROM stage_availability_events
      ORDER BY user_id, channel, at, event_uuid) AS x
LEFT JOIN LATERAL (
    SELECT p.from_at, p.from_event FROM availability_periods p
    WHERE p.user_id = x.user_id AND p.channel = x.channel AND (p.from_at, p.from_event) < (x.at, x.event_uuid)
    ORDER BY p.from_at DESC, p.from_event DESC
    LIMIT 1
) AS p ON true;

DELETE FROM availability_periods p
USING stage_availability_windows w
WHERE p.user_id = w.user_id AND p.channel = w.channel
  AND (w.from_at IS NULL OR (p.from_at, p.from_event) >= (w.from_at, w.from_event));

WITH ev AS (
    SELECT e.user_id, e.channel, e.at, e.event_uuid, e.status,
           lag(e.status) OVER (PARTITION BY e.user_id, e.channel ORDER BY e.at, e.event_uuid) AS status_before
    FROM availability_events e
    JOIN stage_availability_windows w ON e.user_id = w.user_id AND e.channel = w.channel
    WHERE w.from_at IS NULL OR (e.at, e.event_uuid) >= (w.from_at, w.from_event)
),
runs AS (
    SELECT user_id, channel, status, at AS from_at, event_uuid AS from_event,
           lead(at) OVER (PARTITION BY user_id, channel ORDER BY at, event_uuid) AS to_at
    FROM ev
    WHERE status_before IS DISTINCT FROM status
)
INSERT INTO availability_periods (user_id, channel, status, from_at, to_at, from_event)
SELECT user_id, channel, status, from_at, to_at, from_event FROM runs
ORDER BY user_id, channel, from_at, from_event;
"""


def _stage(cur, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Fill staging table `table` with exactly these rows (a transaction may
    stage several times: a rebuild's pages, a batch written event by event)."""
    cur.execute(f"SET LOCAL client_min_messages = warning; {_STAGING}; DELETE FROM {table}")
    copy_rows(cur, table, columns, rows)


def _bigint_array(values: list[int]) -> str:
    """A bigint[] literal for COPY (copy_rows would send a list of ints as JSON)."""
    return "{" + ",".join(map(str, values)) + "}"


def _closes_open_session(events: list[tuple]):
    """When a session is open before these (sorted) events: the time that closes
    it, i.e. the first instant if a disconnection is there (disconnections go
    first), else None."""
    if events and any(kind == "logout" for at, kind in events if at == events[0][0]):
        return events[0][0]
    return None


@registry.handles_webhooks(PUSHED, CLOSED, CONNECTED, DISCONNECTED, AVAILABILITY, SATISFACTION)
def apply(cur, events: list[StoredEvent]) -> None:
    conversations, answers, users, availability = [], [], [], []
    for stored in events:
        event, p = stored.event, stored.event.parameters
        uuid = p["event_id"]
        if event.name in (PUSHED, CLOSED):
            pushed = event.name == PUSHED
            conversations.append((
                uuid, stored.id, p["conversation_id"], "pushed" if pushed else "closed", event.created,
                p["client_id"], p["project_id"], p["channel"], p.get("visitor_id"),
                p["operator_id"] if pushed else None, None if pushed else _bigint_array(p["operator_ids"])))
        elif event.name == SATISFACTION:
            if any(p.get(a) is not None for a in _ANSWERS):  # customQuestion alone changes nothing
                answers.append((uuid, stored.id, p["conversation_id"], event.created,
                                *(p.get(a) for a in _ANSWERS)))
        elif event.name in (CONNECTED, DISCONNECTED):
            users.append((uuid, stored.id, p["user_id"], event.created,
                          "connected" if event.name == CONNECTED else "disconnected"))
        else:
            # A channel listed twice: its last entry counts.
            statuses = {a["channel"]: a["status"] for a in p["availabilities"]}
            availability += [(uuid, channel, stored.id, p["user_id"], event.created, status)
                             for channel, status in statuses.items()]

    keys = sorted({("conversation", row[2]) for row in (*conversations, *answers)}
                  | {("user", str(row[2])) for row in users} | {("user", str(row[3])) for row in availability})
    if not keys:
        return
    cur.execute(_LOCK, ([k for k, _ in keys], [v for _, v in keys]))

    if conversations:
        _stage(cur, "stage_webhook_conversation_events", _CONVERSATION_COLUMNS, conversations)
        cur.execute(_insert_side("webhook_conversation_events", _CONVERSATION_COLUMNS))
        cur.execute(_ASSIGNMENTS)
        cur.execute(_CONVERSATIONS)
    if answers:
        _stage(cur, "stage_satisfaction_events", _SATISFACTION_COLUMNS, answers)
        cur.execute(_insert_side("satisfaction_events", _SATISFACTION_COLUMNS))
        cur.execute(_SATISFACTION)
    if users:
        _stage(cur, "stage_user_events", _USER_COLUMNS, users)
        cur.execute(_insert_side("user_events", _USER_COLUMNS))
        _recompute_sessions(cur)
    if availability:
        _stage(cur, "stage_availability_events", _AVAILABILITY_COLUMNS, availability)
        cur.execute(_insert_side("availability_events", _AVAILABILITY_COLUMNS))
        cur.execute(_AVAILABILITY)


def _recompute_sessions(cur) -> None:
    """Pair again, with workers.sessions.pair_sessions (the operators' rule),
    each staged user's connections from its window on."""
    cur.execute(_SESSION_WINDOWS)
    windows = cur.fetchall()
    cur.execute(_DELETE_SESSIONS)
    cur.execute(_WINDOW_EVENTS)
    kinds = {"connected": "login", "disconnected": "logout"}
    by_user = {user: [(at, kinds[kind]) for _, at, kind in rows]
               for user, rows in groupby(cur.fetchall(), key=lambda r: r[0])}

    sessions, closes = [], []
    for user, t0, m, m_end in windows:
        open_before = m is not None and (m_end is None or m_end >= t0)
        events_of = by_user.get(user, [])
        sessions += [(user, start, end) for start, end in pair_sessions(events_of, open_before)]
        if open_before and (close := _closes_open_session(events_of)) != m_end:
            closes.append((user, m, close))
    if closes:
        cur.execute(_CLOSE_BEFORE, tuple(map(list, zip(*closes, strict=True))))
    if sessions:
        copy_rows(cur, "user_sessions", ("user_id", "connected_at", "disconnected_at"), sessions)
