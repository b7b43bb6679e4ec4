"""Today's webhooks (CONTRACT 7) -> conversations_v2, conversation_assignments,
satisfaction, user_sessions, availability_periods.

Each table is a function of the SET of distinct events, in the order
(createdAt as an instant, then eventId as text), whatever order they come in.
An eventId reaches the handlers once (workers.store claims it: a redelivery,
whatever its fields, is one more receipt of the stored event); a replay or a
rebuild hands them the same events again. A batch stages its rows in one
table, then:

1. Conversations and satisfaction: every field is the earliest or the latest
   of some events, a min or a max, so the batch folds its own events into the
   stored row, the row keeping the eventId beside each instant it compared
   (ties on createdAt). One upsert per table (INSERT ... ON CONFLICT DO
   UPDATE), which compares with the row as last committed and holds its lock
   to commit: batches sharing a conversation fold in turn, in any order. An
   event is folded the first time it is handled only: when the batch adds its
   row to conversation_assignments (pushed; `assignments` counts them) or to
   conversation_event_ids (closed, answers), each unique by conversation and
   eventId; handled again, with whatever createdAt, it changes nothing.
2. Users: a session or an availability run depends on the events around it,
   and a late event may split a run or pair another connection, so these are
   recomputed. The events go to side tables (unique by user or channel, then
   eventId; ON CONFLICT DO NOTHING), the batch locks the webhook_locks row of
   each user it touches, and recomputes from a window: from the batch's
   earliest event of the user (sessions) or from the event just before the
   batch's earliest of the channel (availability); everything before a window
   is final, because pairing and runs depend only on what came before.
   Windows are found and read through indexes, one lookup per user or
   channel, so that a batch costs what it touches, not the history of the
   tables. Row locks rather than advisory locks: they live in the tuples, so
   a batch of thousands of users, or a rebuild (one transaction over every
   event), never fills the shared lock table (max_locks_per_transaction x
   max_connections entries); a batch that waited recomputes after the other
   committed, and its next statement (READ COMMITTED) sees that batch's side
   rows.

Every batch takes its row locks in one order (conversations, satisfaction,
then users, each in one sorted statement), so batches never deadlock. Users
come last: consecutive batches nearly always share a user (a desk's few hundred
users each update their availability every few minutes), seldom a
conversation, so a batch holds the locks another is likely to wait for only for
its user recomputes and its commit.

One handler for the six types, so that its statements take the locks of all
of them in that one order: locks taken by several handlers in turn could be
taken crosswise.
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

_USER_COLUMNS = ("event_uuid", "event_id", "user_id", "at", "kind")
_AVAILABILITY_COLUMNS = ("event_uuid", "channel", "event_id", "user_id", "at", "status")

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


def _staged(rows: str, where: str, order: str, columns: str = "*") -> str:
    """Per conversation, the one row of `rows` (matching `where`) first in `order`."""
    return (f"SELECT DISTINCT ON (conversation_id) {columns} FROM {rows} WHERE {where}"
            f" ORDER BY conversation_id, {order}")


_EARLIEST, _LATEST = "at, event_uuid", "at DESC, event_uuid DESC"

# Conversations, merged (migration 0022): the batch's earliest pushed event (fp),
# latest pushed (lp) and latest closed (lc) of each conversation, folded into the
# stored row where they come first or last in (createdAt, eventId). ON CONFLICT
# DO UPDATE compares with the row as last committed, and holds the row's lock
# to commit, so batches sharing a conversation fold in turn, in any order.
# Only events handled for the first time are folded: a pushed event whose
# conversation_assignments row this batch adds (`assignments` grows by their
# number), a closed event or an answer whose conversation_event_ids row it
# adds. One handled again (a replay, or a receipt after retention pruned its
# row, maybe with another createdAt) changes nothing. The rows are written in
# conversation order, so batches lock shared conversations in one order.
# Attributes come from the earliest pushed event, else from the latest closed
# one (a whole event's values: a pushed event without visitorId does not
# borrow a closed event's).
_ATTRS = ("client_id", "project_id", "channel", "visitor_id")


def _wins(at: str, event: str, comparison: str) -> str:
    """The batch's (instant, eventId) comes before ('<') or after ('>') the row's, or the row has none."""
    return (f"(excluded.{event} IS NOT NULL AND (c.{event} IS NULL"
            f" OR (excluded.{at}, excluded.{event}) {comparison} (c.{at}, c.{event})))")


_FP_WINS = _wins("started_at", "first_event", "<")
_LP_WINS = _wins("last_assigned_at", "last_assigned_event", ">")
_LC_WINS = _wins("ended_at", "closed_event", ">")


def _take(condition: str, columns: Sequence[str]) -> str:
    return ", ".join(f"{col} = CASE WHEN {condition} THEN excluded.{col} ELSE c.{col} END" for col in columns)


_CONVERSATIONS = f"""
WITH assigned AS (
    INSERT INTO conversation_assignments (event_uuid, conversation_id, operator_id, assigned_at)
    SELECT event_uuid, conversation_id, operator_id, at FROM stage_webhooks
    WHERE part = 'conversation' AND kind = 'pushed'
    ORDER BY conversation_id, event_uuid
    ON CONFLICT DO NOTHING
    RETURNING event_uuid
),
closed AS (
    INSERT INTO conversation_event_ids (conversation_id, event_uuid)
    SELECT conversation_id, event_uuid FROM stage_webhooks WHERE part = 'conversation' AND kind = 'closed'
    ORDER BY conversation_id, event_uuid
    ON CONFLICT DO NOTHING
    RETURNING event_uuid
),
new AS (
    SELECT * FROM stage_webhooks WHERE part = 'conversation'
    AND (event_uuid IN (SELECT event_uuid FROM assigned) OR event_uuid IN (SELECT event_uuid FROM closed))
),
added AS (SELECT conversation_id, count(*) AS n FROM new WHERE kind = 'pushed' GROUP BY conversation_id),
fp AS ({_staged("new", "kind = 'pushed'", _EARLIEST)}),
lp AS ({_staged("new", "kind = 'pushed'", _LATEST, "conversation_id, at, event_uuid, operator_id")}),
lc AS ({_staged("new", "kind = 'closed'", _LATEST)}),
b AS (SELECT DISTINCT conversation_id FROM new)
INSERT INTO conversations_v2 AS c (conversation_id, {", ".join(_ATTRS)}, operator_id, last_operator_id, operator_ids,
                                   assignments, started_at, ended_at, first_event, last_assigned_at,
                                   last_assigned_event, closed_event)
SELECT b.conversation_id,
       {", ".join(f"CASE WHEN fp.event_uuid IS NOT NULL THEN fp.{a} ELSE lc.{a} END" for a in _ATTRS)},
       fp.operator_id, lp.operator_id, lc.operator_ids, coalesce(added.n, 0), fp.at, lc.at,
       fp.event_uuid, lp.at, lp.event_uuid, lc.event_uuid
FROM b LEFT JOIN fp USING (conversation_id) LEFT JOIN lp USING (conversation_id)
     LEFT JOIN lc USING (conversation_id) LEFT JOIN added USING (conversation_id)
ORDER BY b.conversation_id COLLATE "C"
ON CONFLICT (conversation_id) DO UPDATE SET
    {_take(f"{_FP_WINS} OR (c.first_event IS NULL AND {_LC_WINS})", _ATTRS)},
    {_take(_FP_WINS, ("operator_id", "started_at", "first_event"))},
    {_take(_LP_WINS, ("last_operator_id", "last_assigned_at", "last_assigned_event"))},
    {_take(_LC_WINS, ("operator_ids", "ended_at", "closed_event"))},
    assignments = c.assignments + excluded.assignments
WHERE {_FP_WINS} OR {_LP_WINS} OR {_LC_WINS} OR excluded.assignments > 0
"""


# Satisfaction, merged the same way: each answer from the latest event carrying
# it (only events with an answer are staged).
def _answer_wins(a: str) -> str:
    return _wins(f"{a}_at", f"{a}_event", ">")


_SATISFACTION = f"""
WITH seen AS (
    INSERT INTO conversation_event_ids (conversation_id, event_uuid)
    SELECT conversation_id, event_uuid FROM stage_webhooks WHERE part = 'satisfaction'
    ORDER BY conversation_id, event_uuid
    ON CONFLICT DO NOTHING
    RETURNING event_uuid
),
new AS (SELECT * FROM stage_webhooks WHERE part = 'satisfaction' AND event_uuid IN (SELECT event_uuid FROM seen)),
{", ".join(f"{a} AS ({_staged('new', f'{a} IS NOT NULL', _LATEST)})" for a in _ANSWERS)},
b AS (SELECT DISTINCT conversation_id FROM new)
INSERT INTO satisfaction AS c (conversation_id, {", ".join(f"{a}, {a}_at, {a}_event" for a in _ANSWERS)})
SELECT b.conversation_id, {", ".join(f"{a}.{a}, {a}.at, {a}.event_uuid" for a in _ANSWERS)}
FROM b {" ".join(f"LEFT JOIN {a} USING (conversation_id)" for a in _ANSWERS)}
ORDER BY b.conversation_id COLLATE "C"
ON CONFLICT (conversation_id) DO UPDATE SET
    {", ".join(_take(_answer_wins(a), (a, f"{a}_at", f"{a}_event")) for a in _ANSWERS)}
WHERE {" OR ".join(_answer_wins(a) for a in _ANSWERS)}
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
            # operatorIds as a bigint[] literal: copy_rows would send a list of ints as JSON.
            pushed = event.name == PUSHED
            conversations.add(p["conversation_id"])
            rows.append(("conversation", *head, p["conversation_id"], None, event.created,
                         "pushed" if pushed else "closed", p["client_id"], p["project_id"], p["channel"],
                         p.get("visitor_id"), p["operator_id"] if pushed else None,
                         None if pushed else array(p["operator_ids"]), None, None, None, None))
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

    # Conversations and satisfaction are folded into their rows (each row locked
    # by its own upsert); users' side rows first (they need no lock: no two
    # batches hold one eventId, workers.store sees to that), then their locks,
    # then their recomputes, the first of them in the same round trip. A batch
    # that waits for another's lock then recomputes from a fresh snapshot, the
    # other's rows committed.
    if conversations or answered:
        # The staging table is never analysed: its rows are guessed at one, so
        # the planner nested its per-conversation subqueries (a rescan of each
        # for every conversation: 25 ms for 271 of them) where hash joins take
        # a pass each.
        cur.execute(";".join(["SET LOCAL enable_nestloop = off", *([_CONVERSATIONS] if conversations else []),
                              *([_SATISFACTION] if answered else []), "RESET enable_nestloop"]))
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
