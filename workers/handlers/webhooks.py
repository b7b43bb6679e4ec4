"""Today's webhooks (CONTRACT 7) -> conversations_v2, conversation_assignments,
satisfaction, user_sessions, availability_periods.

Each table is a function of the SET of distinct events, in the order
(createdAt as an instant, then eventId as text). Merging events into rows as
they come cannot give that (a late event may change which one is "earliest",
or split an availability run), so every batch:

1. records each event's fields in a side table, unique by (conversation,
   user or channel, then eventId), ON CONFLICT DO NOTHING, so that a replay
   adds nothing. An eventId reaches the handlers once (workers.store claims
   it: a redelivery, whatever its fields, is one more receipt of the stored
   event), so no lock is needed for that and no two side rows share one;
2. locks the webhook_locks row of every conversation it touches and
   recomputes the rows of those conversations from the side tables with
   set-based SQL; then does the same for its users (sessions, availability).
   Row locks rather than advisory locks: they live in the tuples, so a batch
   of thousands of conversations, or a rebuild (one transaction over every
   event), never fills the shared lock table (max_locks_per_transaction x
   max_connections entries). Every batch takes them in the same order (kind,
   then key, each kind in one sorted statement), so batches never deadlock; a
   batch that waited recomputes after the other committed, and its next
   statement (READ COMMITTED) sees that batch's side rows.

Users are locked last, and no lock comes before the recomputes: consecutive
batches nearly always share a user (a desk's few hundred users each update
their availability every few minutes), seldom a conversation, so a batch
holds the locks another is likely to wait for only for its user recomputes
and its commit.

One handler for the six types, so that its two lock statements cover them all
in one order: locks taken by several handlers in turn could be taken crosswise.

Conversations and satisfaction hold a few events each and are recomputed
whole. Sessions and availability runs are recomputed from a window: from the
batch's earliest event of the user (sessions) or from the event just before
the batch's earliest of the channel (availability); everything before a
window is final, because pairing and runs depend only on what came before.
Windows and conversations are found and read through indexes, one lookup per
user, channel or conversation, so that a batch costs what it touches, not the
history of the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from pushline.pgarrays import array
from pushline.pgcopy import copy_rows, stage_rows
from workers.registry import StoredEvent, registry
from workers.sessions import pair_sessions

PUSHED, CLOSED = "v2.conversation.pushed", "v2.conversation.closed"
CONNECTED, DISCONNECTED = "user.connected", "user.disconnected"
AVAILABILITY, SATISFACTION = "user.availability.updated", "satisfaction.answered"
_ANSWERS = ("customer_satisfaction", "net_promoter_score", "satisfaction_comment")

# The batch's rows of the four kinds, in one staging table (`part` tells them
# apart; made once per session by pushline.pgcopy, emptied at commit): one COPY a
# batch. Columns as in the side tables.
_STAGE_COLUMNS = ("part", "event_uuid", "event_id", "conversation_id", "user_id", "at", "kind", "client_id",
                  "project_id", "channel", "visitor_id", "operator_id", "operator_ids", "status", *_ANSWERS)
_NO = (None,) * len(_STAGE_COLUMNS)

_CONVERSATION_COLUMNS = ("event_uuid", "event_id", "conversation_id", "kind", "at", "client_id", "project_id",
                         "channel", "visitor_id", "operator_id", "operator_ids")
_SATISFACTION_COLUMNS = ("event_uuid", "event_id", "conversation_id", "at", *_ANSWERS)
_USER_COLUMNS = ("event_uuid", "event_id", "user_id", "at", "kind")
_AVAILABILITY_COLUMNS = ("event_uuid", "channel", "event_id", "user_id", "at", "status")
_BY_CONVERSATION = "conversation_id, event_uuid"

# ON CONFLICT DO UPDATE ... WHERE false inserts the missing rows and locks the
# existing ones (as FOR UPDATE would) without writing a new row version. The
# input is sorted: the locks are taken in that order.
_LOCK = """
INSERT INTO webhook_locks (kind, key)
SELECT '{0}', key FROM unnest(%({0}_keys)s::text[]) AS x(key)
ORDER BY key COLLATE "C"
ON CONFLICT (kind, key) DO UPDATE SET key = excluded.key WHERE false
"""


# Side rows go in their table's key order (see migration 0021): neighbours in
# the index are written together.
def _insert_side(table: str, part: str, columns: Sequence[str], key: str) -> str:
    cols = ", ".join(columns)
    return (f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_webhooks WHERE part = '{part}' ORDER BY {key}"
            " ON CONFLICT DO NOTHING")


# One row per distinct pushed event, whatever else: no recompute needed. The
# side rows this batch added (RETURNING), so that both say the same when an
# eventId came twice: a side row and its assignment are written together.
_CONVERSATION_EVENTS = f"""
WITH added AS ({_insert_side("webhook_conversation_events", "conversation", _CONVERSATION_COLUMNS, _BY_CONVERSATION)}
               RETURNING event_uuid, conversation_id, kind, operator_id, at)
INSERT INTO conversation_assignments (event_uuid, conversation_id, operator_id, assigned_at)
SELECT event_uuid, conversation_id, operator_id, at FROM added WHERE kind = 'pushed'
ORDER BY conversation_id, event_uuid
ON CONFLICT DO NOTHING
"""

# Per conversation, its events aggregated where they are read: one index
# lookup per conversation (a join with the staging table, which is never
# analysed, read the whole side table as soon as it held a few thousand rows),
# and no sort or grouping by conversation_id, whose collation is the
# database's (strcoll for every comparison); the ordered aggregates sort a
# conversation's few events by (at, event_uuid), event_uuid in "C".
_PER_CONVERSATION = """unnest(%({1})s::text[]) AS c(conversation_id) CROSS JOIN LATERAL (
    SELECT {2} FROM {0} w WHERE w.conversation_id = c.conversation_id) AS a"""

# Attributes from the earliest pushed event, else from the latest closed one
# (a whole event's values: a pushed event without visitorId does not borrow a
# closed event's).
_ATTR = "CASE WHEN (a.fp).event_uuid IS NOT NULL THEN (a.fp).{0} ELSE (a.lc).{0} END"
_CONVERSATION_AGGREGATES = """
    count(*) FILTER (WHERE w.kind = 'pushed') AS assignments,
    min(w.at) FILTER (WHERE w.kind = 'pushed') AS started_at,
    max(w.at) FILTER (WHERE w.kind = 'closed') AS ended_at,
    (array_agg(w ORDER BY w.at, w.event_uuid) FILTER (WHERE w.kind = 'pushed'))[1] AS fp,
    (array_agg(w ORDER BY w.at DESC, w.event_uuid DESC) FILTER (WHERE w.kind = 'pushed'))[1] AS lp,
    (array_agg(w ORDER BY w.at DESC, w.event_uuid DESC) FILTER (WHERE w.kind = 'closed'))[1] AS lc"""
_CONVERSATIONS = f"""
INSERT INTO conversations_v2 (conversation_id, client_id, project_id, channel, visitor_id, operator_id,
                              last_operator_id, operator_ids, assignments, started_at, ended_at)
SELECT c.conversation_id, {_ATTR.format("client_id")}, {_ATTR.format("project_id")},
       {_ATTR.format("channel")}, {_ATTR.format("visitor_id")},
       (a.fp).operator_id, (a.lp).operator_id, (a.lc).operator_ids, a.assignments, a.started_at, a.ended_at
FROM {_PER_CONVERSATION.format("webhook_conversation_events", "conversations", _CONVERSATION_AGGREGATES)}
WHERE a.started_at IS NOT NULL OR a.ended_at IS NOT NULL
ORDER BY c.conversation_id COLLATE "C"
ON CONFLICT (conversation_id) DO UPDATE SET
    client_id = excluded.client_id, project_id = excluded.project_id, channel = excluded.channel,
    visitor_id = excluded.visitor_id, operator_id = excluded.operator_id,
    last_operator_id = excluded.last_operator_id, operator_ids = excluded.operator_ids,
    assignments = excluded.assignments, started_at = excluded.started_at, ended_at = excluded.ended_at
"""

# Each answer from the latest event carrying it (only such events are kept).
_LATEST = "(array_agg(w.{0} ORDER BY w.at DESC, w.event_uuid DESC) FILTER (WHERE w.{0} IS NOT NULL))[1] AS {0}"
_LATEST_AT = "max(w.at) FILTER (WHERE w.{0} IS NOT NULL) AS {0}_at"
_SATISFACTION_AGGREGATES = ", ".join(f"{_LATEST.format(a)}, {_LATEST_AT.format(a)}" for a in _ANSWERS)
_SATISFACTION = f"""
INSERT INTO satisfaction (conversation_id, {", ".join(f"{a}, {a}_at" for a in _ANSWERS)})
SELECT c.conversation_id, {", ".join(f"a.{a}, a.{a}_at" for a in _ANSWERS)}
FROM {_PER_CONVERSATION.format("satisfaction_events", "answered", _SATISFACTION_AGGREGATES)}
WHERE {" OR ".join(f"a.{a}_at IS NOT NULL" for a in _ANSWERS)}
ORDER BY c.conversation_id COLLATE "C"
ON CONFLICT (conversation_id) DO UPDATE SET
    {", ".join(f"{a} = excluded.{a}, {a}_at = excluded.{a}_at" for a in _ANSWERS)}
"""

# Sessions. The window of a user starts at t0, the batch's earliest event of
# that user: sessions that began before it are final, but for the one open
# just before t0 (its connection is the last one before t0, m), whose end the
# events from t0 on decide. The end of m's session: the one row at m with an
# end, when duplicate connections at m made several rows.
#
# Every statement here is one index lookup per window, whatever the sizes of
# the tables. The windows come as arrays (unnest of a literal array: the
# planner knows how many), not from the staging table, which is never
# analysed. Each lookup is a LATERAL subquery with OFFSET 0, which the planner
# cannot flatten into a join: `at >= t0` against a parameter is guessed at a
# third of the user's rows, so as a join, a few users made a hash join over
# the whole of user_sessions or user_events look cheaper than the lookups (it
# read every user's history for a one-event batch). Deletes take the ids the
# lookups found. Sessions without a connection are looked up apart, through
# user_sessions_orphan_disconnect: an OR of the two cannot be one index
# condition.
_WINDOWS = "unnest(%(users)s::bigint[], %(t0s)s::timestamptz[]) AS w(user_id, t0)"

_SESSION_WINDOWS = f"""
SELECT m.user_id, m.t0, m.m,
       (SELECT s.disconnected_at FROM user_sessions s WHERE s.user_id = m.user_id AND s.connected_at = m.m
        ORDER BY s.disconnected_at NULLS LAST LIMIT 1) AS m_end
FROM (SELECT w.user_id, w.t0,
             (SELECT max(s.connected_at) FROM user_sessions s
              WHERE s.user_id = w.user_id AND s.connected_at < w.t0) AS m
      FROM {_WINDOWS}) AS m
ORDER BY m.user_id
"""

_DELETE_SESSIONS = f"""
DELETE FROM user_sessions WHERE id = ANY (ARRAY(
    SELECT s.id FROM {_WINDOWS} CROSS JOIN LATERAL (
        SELECT s.id FROM user_sessions s WHERE s.user_id = w.user_id AND s.connected_at >= w.t0 OFFSET 0
    ) AS s));
DELETE FROM user_sessions WHERE id = ANY (ARRAY(
    SELECT s.id FROM {_WINDOWS} CROSS JOIN LATERAL (
        SELECT s.id FROM user_sessions s
        WHERE s.user_id = w.user_id AND s.connected_at IS NULL AND s.disconnected_at >= w.t0 OFFSET 0
    ) AS s))
"""

_WINDOW_EVENTS = f"""
SELECT w.user_id, e.at, e.kind
FROM {_WINDOWS} CROSS JOIN LATERAL (
    SELECT e.at, e.kind FROM user_events e WHERE e.user_id = w.user_id AND e.at >= w.t0 OFFSET 0
) AS e
ORDER BY 1, 2
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

# Availability runs, per user and channel. The window starts at p, the event
# just before the batch's earliest event of that channel (no such event: the
# whole history). Everything before p is final, and so is the run R holding p
# but for its end, to_at: the first event after p with another status than
# p's. The runs after R are deleted and the window's recomputed (gaps and
# islands: a run starts where the status changes); the first of them starts
# at p and is R itself, whose new end is set instead, when it changed.
# Starting at R's first event would read R's whole run again: all the history
# of a channel whose status never changes.
#
# The windows: per (user, channel) staged, p, R and R's new end, each found by
# one index scan (LATERAL ... LIMIT 1 is a nested loop whatever the staging
# table's estimate). After that, as for sessions: the windows as arrays, one
# lookup per window (LATERAL ... OFFSET 0), R updated by its ctid (a TID scan
# per row; joined on its key, the planner read the whole table). A window
# without p starts at ('-infinity', ''), before any event: with coalesce
# rather than `p IS NULL OR ...`, the row comparison is an index condition on
# availability_periods' primary key and on availability_events' (user_id, channel, at, event_uuid).
_AVAILABILITY_WINDOWS = """
SELECT x.user_id, x.channel, p.at, p.event_uuid, r.ctid, r.to_at,
       (SELECT e.at FROM availability_events e
        WHERE e.user_id = x.user_id AND e.channel = x.channel AND (e.at, e.event_uuid) > (p.at, p.event_uuid)
          AND e.status <> p.status
        ORDER BY e.at, e.event_uuid
        LIMIT 1) AS run_to
FROM (SELECT DISTINCT ON (user_id, channel) user_id, channel, at, event_uuid FROM stage_webhooks
      WHERE part = 'availability' ORDER BY user_id, channel, at, event_uuid) AS x
LEFT JOIN LATERAL (
    SELECT e.at, e.event_uuid, e.status FROM availability_events e
    WHERE e.user_id = x.user_id AND e.channel = x.channel AND (e.at, e.event_uuid) < (x.at, x.event_uuid)
    ORDER BY e.at DESC, e.event_uuid DESC
    LIMIT 1
) AS p ON true
LEFT JOIN LATERAL (
    SELECT r.ctid, r.to_at FROM availability_periods r
    WHERE r.user_id = x.user_id AND r.channel = x.channel AND (r.from_at, r.from_event) <= (p.at, p.event_uuid)
    ORDER BY r.from_at DESC, r.from_event DESC
    LIMIT 1
) AS r ON true
ORDER BY x.user_id, x.channel
"""

_AVAILABILITY_WINDOW = """unnest(%(users)s::bigint[], %(channels)s::text[], %(ats)s::timestamptz[], %(events)s::text[])
    AS w(user_id, channel, at, event_uuid)"""
_FROM_P = "(coalesce(w.at, '-infinity'), coalesce(w.event_uuid COLLATE \"C\", ''))"

# Rows of one (user, channel) are written only under that user's lock, which
# this batch holds: a row's ctid stays put until this batch changes the row.
_RUN_ENDS = """
UPDATE availability_periods p SET to_at = r.to_at
FROM unnest(%(run_ctids)s::tid[], %(run_tos)s::timestamptz[]) AS r(ctid, to_at)
WHERE p.ctid = r.ctid;
"""
_AVAILABILITY = f"""
DELETE FROM availability_periods WHERE ctid = ANY (ARRAY(
    SELECT p.ctid FROM {_AVAILABILITY_WINDOW} CROSS JOIN LATERAL (
        SELECT p.ctid FROM availability_periods p
        WHERE p.user_id = w.user_id AND p.channel = w.channel AND (p.from_at, p.from_event) > {_FROM_P} OFFSET 0
    ) AS p));

WITH ev AS (
    SELECT w.user_id, w.channel, e.at, e.event_uuid, e.status, w.at IS NOT NULL AS from_p,
           lag(e.status) OVER (PARTITION BY w.user_id, w.channel ORDER BY e.at, e.event_uuid) AS status_before
    FROM {_AVAILABILITY_WINDOW} CROSS JOIN LATERAL (
        SELECT e.at, e.event_uuid, e.status FROM availability_events e
        WHERE e.user_id = w.user_id AND e.channel = w.channel AND (e.at, e.event_uuid) >= {_FROM_P} OFFSET 0
    ) AS e
),
runs AS (
    SELECT user_id, channel, status, at AS from_at, event_uuid AS from_event,
           lead(at) OVER o AS to_at,
           from_p AND lag(at) OVER o IS NULL AS is_r  -- the run at p, the window's first: R, its end set above
    FROM ev
    WHERE status_before IS DISTINCT FROM status
    WINDOW o AS (PARTITION BY user_id, channel ORDER BY at, event_uuid)
)
INSERT INTO availability_periods (user_id, channel, status, from_at, to_at, from_event)
SELECT user_id, channel, status, from_at, to_at, from_event FROM runs
WHERE NOT is_r
ORDER BY user_id, channel, from_at, from_event;
"""


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
    rows, conversations, answered, sessions, availability = [], set(), set(), [], set()
    for stored in events:
        event, p = stored.event, stored.event.parameters
        head = (p["event_id"], stored.id)
        if event.name in (PUSHED, CLOSED):
            pushed = event.name == PUSHED
            conversations.add(p["conversation_id"])
            rows.append(("conversation", *head, p["conversation_id"], None, event.created,
                         "pushed" if pushed else "closed", p["client_id"], p["project_id"], p["channel"],
                         p.get("visitor_id"), p["operator_id"] if pushed else None,
                         None if pushed else _bigint_array(p["operator_ids"]), None, None, None, None))
        elif event.name == SATISFACTION:
            if any(p.get(a) is not None for a in _ANSWERS):  # customQuestion alone changes nothing
                answered.add(p["conversation_id"])
                rows.append(("satisfaction", *head, p["conversation_id"], None, event.created, *_NO[6:14],
                             *(p.get(a) for a in _ANSWERS)))
        elif event.name in (CONNECTED, DISCONNECTED):
            sessions.append((p["user_id"], event.created))
            rows.append(("user", *head, None, p["user_id"], event.created,
                         "connected" if event.name == CONNECTED else "disconnected", *_NO[7:]))
        else:
            # A channel listed twice: its last entry counts.
            statuses = {a["channel"]: a["status"] for a in p["availabilities"]}
            if statuses:  # an empty list changes no channel
                availability.add(p["user_id"])
            rows += [("availability", *head, None, p["user_id"], event.created, None, None, None, channel, None,
                      None, None, status, None, None, None) for channel, status in statuses.items()]
    if not rows:
        return
    stage_rows(cur, "stage_webhooks", _STAGE_COLUMNS, rows)

    # Each part: its side rows first (they need no lock: no two batches hold one
    # eventId, workers.store sees to that), then its locks, then its recompute,
    # in one round trip. A batch that waits for another's lock then recomputes
    # from a fresh snapshot, the other's rows committed.
    if conversations or answered:
        sql = [_CONVERSATION_EVENTS] if conversations else []
        if answered:
            sql.append(_insert_side("satisfaction_events", "satisfaction", _SATISFACTION_COLUMNS, _BY_CONVERSATION))
        sql.append(_LOCK.format("conversation"))
        sql += [_CONVERSATIONS] if conversations else []
        sql += [_SATISFACTION] if answered else []
        cur.execute(";".join(sql), {"conversation_keys": array(sorted(conversations | answered)),
                                    "conversations": array(sorted(conversations)), "answered": array(sorted(answered))})
    if sessions or availability:
        sql = [_insert_side("user_events", "user", _USER_COLUMNS, "user_id, at, event_uuid")] if sessions else []
        if availability:
            sql.append(_insert_side("availability_events", "availability", _AVAILABILITY_COLUMNS,
                                    "user_id, channel, at, event_uuid"))
        sql.append(_LOCK.format("user"))
        locks = ";".join(sql)
        user_keys = array(sorted({str(user) for user, _ in sessions} | {str(user) for user in availability}))
        if sessions:
            _recompute_sessions(cur, sessions, locks, {"user_keys": user_keys})
        if availability:
            _recompute_availability(cur, None if sessions else locks, {"user_keys": user_keys})


def _recompute_sessions(cur, users: list[tuple], before: str, before_params: dict) -> None:
    """Pair again, with workers.sessions.pair_sessions (the operators' rule),
    each staged user's connections from its window on (users: (user, createdAt)
    of the batch's connections and disconnections), after the statements
    `before` (the side rows and the locks)."""
    t0 = {}
    for user, at in users:
        t0[user] = min(at, t0.get(user, at))
    params = {"users": array(sorted(t0)), "t0s": array(t0[user] for user in sorted(t0))}
    cur.execute(before + ";" + _SESSION_WINDOWS, {**before_params, **params})
    windows = cur.fetchall()
    cur.execute(_DELETE_SESSIONS, params)
    cur.execute(_WINDOW_EVENTS, params)
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
        cur.execute(_CLOSE_BEFORE, tuple(map(array, zip(*closes, strict=True))))
    if sessions:
        copy_rows(cur, "user_sessions", ("user_id", "connected_at", "disconnected_at"), sessions)


def _recompute_availability(cur, before: str | None, before_params: dict) -> None:
    """Recompute each staged (user, channel)'s runs from its window on, after
    the statements `before` when there are (the side rows and the locks)."""
    if before:
        cur.execute(before + ";" + _AVAILABILITY_WINDOWS, before_params)
    else:
        cur.execute(_AVAILABILITY_WINDOWS)
    windows, ends = [], []
    for user, channel, at, event, run, run_end, run_to in cur.fetchall():
        if at is not None and run is None:  # no run holds p (never so when the tables agree): start over
            at = event = None
        elif run is not None and run_to != run_end:
            ends.append((run, run_to))
        windows.append((user, channel, at, event))
    params = dict(zip(("users", "channels", "ats", "events"), map(array, zip(*windows, strict=True)), strict=True))
    if ends:
        params["run_ctids"], params["run_tos"] = map(array, zip(*ends, strict=True))
    cur.execute((_RUN_ENDS if ends else "") + _AVAILABILITY, params)
