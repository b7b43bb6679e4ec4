"""The expected webhook tables for a set of webhook bodies, straight from CONTRACT 7.

Deliberately naive and independent of the workers: no SQL, nothing
incremental. Each distinct event (by `eventId`) is taken once; within a
conversation, a user or a channel, events are ordered by (`createdAt` as an
instant, `eventId` as text); user sessions pair connects and disconnects by
the rule of operator sessions (CONTRACT 5); the views' days are local days in
PUSH_TIMEZONE, each starting at its first instant.

Where the contract leaves a choice open, every allowed answer is accepted:

- A `createdAt` without an offset is read in PUSH_TIMEZONE; the contract does
  not say which reading a local time that happens twice (autumn) or never
  (spring) has. `expected` returns one set of tables per combination of
  readings of such texts (a "world"); the database must equal one of them.
  One text has one reading in a world, so an implementation must at least
  read the same text the same way everywhere.
- A conversation known only from `satisfaction.answered` has no pushed or
  closed event to fill a `conversations_v2` row: the row may be absent or
  present with nothing known (`Absent` below).
- The views do not say whether a (user, day) or a count with nothing in it
  is a row of zeros, a row of nulls or no row: in `user_daily` rows whose
  every figure is zero or null are dropped on both sides, and a null count or
  null seconds reads as 0. `avg_*` and `nps` stay strict: null when no answer.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from decimal import Decimal
from zoneinfo import ZoneInfo

UTC = dt.UTC

PUSHED, CLOSED = "v2.conversation.pushed", "v2.conversation.closed"
CONNECTED, DISCONNECTED = "user.connected", "user.disconnected"
AVAILABILITY, SATISFACTION = "user.availability.updated", "satisfaction.answered"
HANDLED = (PUSHED, CLOSED, CONNECTED, DISCONNECTED, AVAILABILITY, SATISFACTION)

# (iAdvize's field, the satisfaction table's column)
ANSWERS = (("customerSatisfaction", "customer_satisfaction"), ("netPromoterScore", "net_promoter_score"),
           ("satisfactionComment", "satisfaction_comment"))

TABLES = ("conversations_v2", "conversation_assignments", "satisfaction", "user_sessions", "availability_periods",
          "conversation_v2_daily", "user_daily")


# --- events and their times ---------------------------------------------------------------------

def distinct(bodies) -> list[dict]:
    """One body per string `eventId` (its first copy, in input order); bodies without one
    have no identity of their own here (they are rejected, CONTRACT 7)."""
    seen: dict[str, dict] = {}
    for body in bodies:
        if isinstance(body.get("eventId"), str):
            seen.setdefault(body["eventId"], body)
    return list(seen.values())


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _string(value) -> bool:
    return isinstance(value, str)  # (the streams never send an empty id: whether "" is one is not tested)


def _time(value) -> bool:
    try:
        dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


_CONVERSATION = {"conversationId": _string, "clientId": _integer, "projectId": _integer, "channel": _string}
# The fields each handled type needs and their JSON types (webhooks-facts.md); the optional
# ones are checked only when present.
_REQUIRED = {
    PUSHED: {**_CONVERSATION, "operatorId": _integer},
    CLOSED: {**_CONVERSATION, "operatorIds": lambda v: isinstance(v, list) and all(map(_integer, v))},
    CONNECTED: {"userId": _integer},
    DISCONNECTED: {"userId": _integer},
    AVAILABILITY: {"userId": _integer, "availabilities": lambda v: isinstance(v, list) and all(
        isinstance(e, dict) and _string(e.get("channel")) and _string(e.get("status")) for e in v)},
    SATISFACTION: {"conversationId": _string},
}
_OPTIONAL = {
    SATISFACTION: {"customerSatisfaction": _integer, "netPromoterScore": lambda v: _integer(v) and 0 <= v <= 10,
                   "satisfactionComment": lambda v: isinstance(v, str),
                   "customQuestion": lambda v: isinstance(v, bool)},
}


def invalid_field(body: dict) -> str | None:
    """For a handled type: the first field (as iAdvize spells it) that is missing or of the
    wrong type, None when the body is valid. Other types are never invalid (unhandled)."""
    kind = body.get("eventType")
    if kind not in HANDLED:
        return None
    if not isinstance(body.get("eventId"), str):
        return "eventId"
    for field in ("createdAt", "sentAt"):
        if not _time(body.get(field)):
            return field
    for field, ok in _REQUIRED[kind].items():
        if field not in body or not ok(body[field]):
            return field
    for field, ok in _OPTIONAL.get(kind, {}).items():
        if field in body and body[field] is not None and not ok(body[field]):
            return field
    return None


def readings(text: str, tz: str) -> tuple[dt.datetime, ...]:
    """The instants an ISO 8601 `createdAt` may denote: one with `Z` or an offset; a
    local time in `tz` has two when it happens twice or falls in a gap, else one."""
    at = dt.datetime.fromisoformat(text)
    if at.tzinfo is not None:
        return (at.astimezone(UTC),)
    zone = ZoneInfo(tz)
    return tuple(sorted({at.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}))


def worlds(bodies, tz: str) -> list[dict[str, dt.datetime]]:
    """Every allowed reading of the `createdAt` texts: text -> instant, one map per combination."""
    texts = sorted({b["createdAt"] for b in distinct(bodies)})
    options = [readings(text, tz) for text in texts]
    return [dict(zip(texts, choice, strict=True)) for choice in itertools.product(*options)]


# --- the tables -------------------------------------------------------------------------------

class Absent:
    """A row that may be missing, or present and equal to `row`."""

    __hash__ = None

    def __init__(self, row: dict):
        self.row = row

    def __eq__(self, other):
        return isinstance(other, Absent) and other.row == self.row

    def __repr__(self) -> str:
        return f"Absent-or({self.row!r})"


def expected(bodies, tz: str = "UTC") -> list[dict[str, object]]:
    """The tables, one set per world (see `worlds`)."""
    events = [b for b in distinct(bodies) if b["eventType"] in HANDLED and invalid_field(b) is None]
    return [tables(events, tz, when) for when in worlds(events, tz)]


def tables(events: list[dict], tz: str, when: dict[str, dt.datetime]) -> dict[str, object]:
    def order(body):
        return (when[body["createdAt"]], body["eventId"])

    def at(body):
        return when[body["createdAt"]]

    zone = ZoneInfo(tz)
    of = {kind: sorted((b for b in events if b["eventType"] == kind), key=order) for kind in HANDLED}

    # conversations_v2 and conversation_assignments
    conversations: dict[str, object] = {}
    for cid in {b["conversationId"] for b in of[PUSHED] + of[CLOSED]}:
        pushed = [b for b in of[PUSHED] if b["conversationId"] == cid]
        closed = [b for b in of[CLOSED] if b["conversationId"] == cid]
        started = at(pushed[0]) if pushed else None
        ended = at(closed[-1]) if closed else None
        source = pushed[0] if pushed else closed[-1]
        conversations[cid] = {
            "started_at": started, "ended_at": ended, "duration_seconds": _seconds(started, ended),
            "client_id": source["clientId"], "project_id": source["projectId"], "channel": source["channel"],
            "visitor_id": source.get("visitorId"),
            "operator_id": pushed[0]["operatorId"] if pushed else None,
            "last_operator_id": pushed[-1]["operatorId"] if pushed else None,
            "operator_ids": list(closed[-1]["operatorIds"]) if closed else None,
            "assignments": len(pushed),
        }
    for cid in {b["conversationId"] for b in of[SATISFACTION]} - set(conversations):
        conversations[cid] = Absent(dict.fromkeys(
            ("started_at", "ended_at", "duration_seconds", "client_id", "project_id", "channel", "visitor_id",
             "operator_id", "last_operator_id", "operator_ids"), None) | {"assignments": 0})
    assignments = sorted((b["eventId"], b["conversationId"], b["operatorId"], at(b)) for b in of[PUSHED])

    # satisfaction: per field, the latest event carrying it
    satisfaction: dict[str, dict] = {}
    for cid in {b["conversationId"] for b in of[SATISFACTION]}:
        answers = [b for b in of[SATISFACTION] if b["conversationId"] == cid]
        row = {}
        for field, column in ANSWERS:
            carrying = [b for b in answers if field in b]
            row[column] = carrying[-1][field] if carrying else None
            row[f"{column}_at"] = at(carrying[-1]) if carrying else None
        if any(row[f"{column}_at"] is not None for _, column in ANSWERS):
            satisfaction[cid] = row

    # user_sessions: the operator-session rule
    sessions = []
    for user in {b["userId"] for b in of[CONNECTED] + of[DISCONNECTED]}:
        marks = [(at(b), "in" if b["eventType"] == CONNECTED else "out")
                 for b in of[CONNECTED] + of[DISCONNECTED] if b["userId"] == user]
        rows: list[list] = []
        open_row = None
        for instant in sorted({t for t, _ in marks}):
            ins = [k for t, k in marks if t == instant and k == "in"]
            outs = [k for t, k in marks if t == instant and k == "out"]
            # A connect and a disconnect at the same time: the disconnect first when a
            # session is open just before (it closes that one), else the connect first.
            for kind in (outs + ins if open_row is not None else ins + outs):
                if kind == "in":
                    rows.append([user, instant, None])
                    open_row = rows[-1]
                elif open_row is not None:
                    open_row[2] = instant
                    open_row = None
                else:
                    rows.append([user, None, instant])
        sessions += [(u, a, b, _seconds(a, b)) for u, a, b in rows]
    sessions.sort(key=_row_order)

    # availability_periods: per user and channel, runs of equal statuses
    statuses: dict[tuple[int, str], list[tuple[dt.datetime, str]]] = {}
    for body in of[AVAILABILITY]:  # already in order
        listed: dict[str, str] = {}
        for entry in body["availabilities"]:
            listed[entry["channel"]] = entry["status"]  # the last entry for a channel wins
        for channel, status in listed.items():
            statuses.setdefault((body["userId"], channel), []).append((at(body), status))
    periods = []
    for (user, channel), steps in statuses.items():
        runs = [steps[0]] + [s for prev, s in itertools.pairwise(steps) if s[1] != prev[1]]
        for (start, status), nxt in itertools.zip_longest(runs, runs[1:]):
            end = nxt[0] if nxt else None
            periods.append((user, channel, status, start, end, _seconds(start, end)))
    periods.sort(key=_row_order)

    return {
        "conversations_v2": conversations,
        "conversation_assignments": assignments,
        "satisfaction": satisfaction,
        "user_sessions": sessions,
        "availability_periods": periods,
        "conversation_v2_daily": _conversation_daily(conversations, satisfaction, zone),
        "user_daily": _user_daily(sessions, assignments, periods, zone),
    }


def _seconds(start, end):
    return (end - start).total_seconds() if start is not None and end is not None else None


def _row_order(row: tuple) -> tuple:
    """A total order on rows holding None and datetimes."""
    return tuple((value is not None, value if value is not None else 0) if not isinstance(value, dt.datetime)
                 else (True, value.timestamp()) for value in row)


# --- the views -----------------------------------------------------------------------------------

def local_day(at: dt.datetime, zone: ZoneInfo) -> dt.date:
    return at.astimezone(zone).date()


def day_start(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    """The first instant of a local day: the earliest reading of its midnight that
    is on that day (a midnight in a gap reads as the jump's instant)."""
    midnight = dt.datetime.combine(day, dt.time())
    readings_ = {midnight.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return min(t for t in readings_ if local_day(t, zone) == day)


def split_by_day(start: dt.datetime, end: dt.datetime, zone: ZoneInfo) -> dict[dt.date, float]:
    """Seconds of [start, end] on each local day (only days with a positive part)."""
    parts = {}
    day = local_day(start, zone)
    while True:
        begin = day_start(day, zone)
        following = day + dt.timedelta(days=1)
        finish = day_start(following, zone)
        seconds = (min(end, finish) - max(start, begin)).total_seconds()
        if seconds > 0:
            parts[day] = seconds
        if finish >= end:
            return parts
        day = following


def _conversation_daily(conversations, satisfaction, zone) -> dict[tuple, dict]:
    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for cid, row in conversations.items():
        if isinstance(row, Absent) or row["started_at"] is None:
            continue
        groups.setdefault((local_day(row["started_at"], zone), row["project_id"], row["channel"]), []).append(
            (cid, row))
    daily = {}
    for key, members in groups.items():
        durations = [row["duration_seconds"] for _, row in members if row["ended_at"] is not None]
        answers = [satisfaction[cid] for cid, _ in members if cid in satisfaction]
        csat = [a["customer_satisfaction"] for a in answers if a["customer_satisfaction_at"] is not None]
        nps = [a["net_promoter_score"] for a in answers if a["net_promoter_score_at"] is not None]
        daily[key] = {
            "conversations": len(members),
            "closed": len(durations),
            "avg_duration_seconds": sum(durations) / len(durations) if durations else None,
            "transfers": sum(row["assignments"] - 1 for _, row in members),
            "csat_answers": len(csat),
            "avg_csat": sum(csat) / len(csat) if csat else None,
            "nps_answers": len(nps),
            "nps": 100 * (sum(s >= 9 for s in nps) - sum(s <= 6 for s in nps)) / len(nps) if nps else None,
        }
    return daily


def _user_daily(sessions, assignments, periods, zone) -> dict[tuple, dict]:
    daily: dict[tuple, dict] = {}

    def add(user, day, column, amount):
        row = daily.setdefault((user, day), dict.fromkeys(
            ("sessions", "connected_seconds", "assignments", "available_seconds"), 0))
        row[column] += amount

    for user, connected, disconnected, _ in sessions:
        if connected is None:
            continue
        add(user, local_day(connected, zone), "sessions", 1)
        if disconnected is not None:
            for day, seconds in split_by_day(connected, disconnected, zone).items():
                add(user, day, "connected_seconds", seconds)
    for _, _, operator, assigned in assignments:
        add(operator, local_day(assigned, zone), "assignments", 1)
    available: dict[int, list[tuple[dt.datetime, dt.datetime]]] = {}
    for user, _, status, start, end, _ in periods:
        if status == "AVAILABLE" and end is not None and end > start:
            available.setdefault(user, []).append((start, end))
    for user, spans in available.items():
        merged: list[list[dt.datetime]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in merged:
            for day, seconds in split_by_day(start, end, zone).items():
                add(user, day, "available_seconds", seconds)
    return {key: row for key, row in daily.items() if any(row.values())}


# --- reading the database -------------------------------------------------------------------------

def _value(value):
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC)
    return value


def _day(value) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value


def _rows(cur, sql: str) -> list[list]:
    cur.execute(sql)
    return [[_value(v) for v in row] for row in cur.fetchall()]


def read_webhook_tables(conn) -> dict[str, object]:
    """The same shapes, read from the database (times aware, in UTC). The session runs in a
    zone that is neither UTC nor PUSH_TIMEZONE, so that a view reading local days from the
    session's zone instead of PUSH_TIMEZONE shows."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('TimeZone'), current_setting('jit')")
        (session_zone, jit), = cur.fetchall()
        # JIT compiling the views' plans costs more than running them on a test's few rows.
        cur.execute("SET TIME ZONE 'Etc/GMT-3'; SET jit = off")
        try:
            conversations = {}
            for r in _rows(cur, """SELECT conversation_id, started_at, ended_at, duration_seconds, client_id,
                                          project_id, channel, visitor_id, operator_id, last_operator_id,
                                          operator_ids, assignments FROM conversations_v2"""):
                conversations[r[0]] = dict(zip(
                    ("started_at", "ended_at", "duration_seconds", "client_id", "project_id", "channel",
                     "visitor_id", "operator_id", "last_operator_id", "operator_ids", "assignments"), r[1:],
                    strict=True))
            assignments = sorted(tuple(r) for r in _rows(
                cur, "SELECT event_uuid::text, conversation_id, operator_id, assigned_at"
                     " FROM conversation_assignments"))
            satisfaction = {}
            for r in _rows(cur, """SELECT conversation_id, customer_satisfaction, customer_satisfaction_at,
                                          net_promoter_score, net_promoter_score_at, satisfaction_comment,
                                          satisfaction_comment_at FROM satisfaction"""):
                satisfaction[r[0]] = dict(zip(
                    ("customer_satisfaction", "customer_satisfaction_at", "net_promoter_score",
                     "net_promoter_score_at", "satisfaction_comment", "satisfaction_comment_at"), r[1:],
                    strict=True))
            sessions = sorted((tuple(r) for r in _rows(
                cur, "SELECT user_id, connected_at, disconnected_at, duration_seconds FROM user_sessions")),
                key=_row_order)
            periods = sorted((tuple(r) for r in _rows(
                cur, "SELECT user_id, channel, status, from_at, to_at, duration_seconds FROM availability_periods")),
                key=_row_order)
            conversation_daily: dict[tuple, dict] = {}
            for r in _rows(cur, """SELECT day, project_id, channel, conversations, closed, avg_duration_seconds,
                                          transfers, csat_answers, avg_csat, nps_answers, nps
                                   FROM conversation_v2_daily"""):
                key = (_day(r[0]), r[1], r[2])
                assert key not in conversation_daily, f"conversation_v2_daily has two rows for {key}"
                conversation_daily[key] = {
                    "conversations": r[3] or 0, "closed": r[4] or 0, "avg_duration_seconds": r[5],
                    "transfers": r[6] or 0, "csat_answers": r[7] or 0, "avg_csat": r[8],
                    "nps_answers": r[9] or 0, "nps": r[10]}
            user_daily: dict[tuple, dict] = {}
            for r in _rows(cur, """SELECT user_id, day, sessions, connected_seconds, assignments, available_seconds
                                   FROM user_daily"""):
                key = (r[0], _day(r[1]))
                assert key not in user_daily, f"user_daily has two rows for {key}"
                row = {"sessions": r[2] or 0, "connected_seconds": r[3] or 0, "assignments": r[4] or 0,
                       "available_seconds": r[5] or 0}
                if any(row.values()):
                    user_daily[key] = row
        finally:
            cur.execute("SELECT set_config('TimeZone', %s, false), set_config('jit', %s, false)", (session_zone, jit))
    return {
        "conversations_v2": conversations,
        "conversation_assignments": assignments,
        "satisfaction": satisfaction,
        "user_sessions": sessions,
        "availability_periods": periods,
        "conversation_v2_daily": conversation_daily,
        "user_daily": user_daily,
    }


# --- comparing ---------------------------------------------------------------------------------------

def same(a, b) -> bool:
    """Equal, with numbers compared with a small tolerance (seconds and averages are floats)."""
    if isinstance(a, Absent) or isinstance(b, Absent):
        return isinstance(a, Absent) and isinstance(b, Absent) and same(a.row, b.row)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is int and type(b) is int:  # ids: exact, even beyond a float's 53 bits
        return a == b
    numbers = (int, float, Decimal)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def differences(actual: dict[str, object], want: dict[str, object]) -> list[str]:
    """Readable differences between the tables read and one expected set."""
    out = []
    for table in TABLES:
        got, exp = actual[table], want[table]
        if isinstance(exp, dict):
            for key in sorted(set(got) | set(exp), key=repr):
                e, g = exp.get(key, "<no row>"), got.get(key, "<no row>")
                if isinstance(e, Absent):
                    if key in got and not same(g, e.row):
                        out.append(f"{table}[{key!r}]: expected no row or {e.row!r}, got {g!r}")
                elif key not in got or key not in exp or not same(g, e):
                    out.append(f"{table}[{key!r}]: expected {e!r}, got {g!r}")
        elif not same(got, exp):
            missing = [r for r in exp if not any(same(r, g) for g in got)]
            extra = [g for g in got if not any(same(r, g) for r in exp)]
            out.append(f"{table}: expected {len(exp)} rows, got {len(got)}; missing {missing!r}; unexpected {extra!r}")
    return out


def mismatch(actual: dict[str, object], candidates: list[dict[str, object]]) -> str | None:
    """None when the tables read equal one of the expected sets, else the differences
    from the closest one."""
    best = None
    for want in candidates:
        diff = differences(actual, want)
        if not diff:
            return None
        if best is None or len(diff) < len(best):
            best = diff
    return f"{len(candidates)} allowed world(s); closest differs in:\n" + "\n".join(best or [])


def same_tables(a: dict[str, object], b: dict[str, object]) -> bool:
    return not differences(a, b) and not differences(b, a)
