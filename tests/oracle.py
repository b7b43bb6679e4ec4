"""The expected tables for a set of events, straight from CONTRACT 5.

Deliberately naive and independent of the workers: no SQL, no incremental
windows, no merging. Operator sessions replay the distinct events in `created`
order, with the contract's rule for a login and a logout at the same time.
Where the contract leaves a tie open (several starts of a conversation at the
earliest time, with different attributes), the expected row is a `OneOf` of the
candidates: the oracle never lets the order of its input decide.
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo


def _when(text: str, tz: str) -> dt.datetime:
    if len(text) == 19 and text[10] == " ":
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(tz)).astimezone(dt.UTC)
    at = dt.datetime.fromisoformat(text)
    return (at if at.tzinfo else at.replace(tzinfo=ZoneInfo(tz))).astimezone(dt.UTC)


def _json_value(value):
    """A JSON value in one spelling: 1 and 1.0 are the same number (CONTRACT 4: "equal as JSON values")."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _canonical(value) -> str:
    return json.dumps(_json_value(value), sort_keys=True)


def distinct(bodies) -> list[dict]:
    """One body per event (its first copy, in input order): same name, same created text, equal parameters."""
    seen = {}
    for body in bodies:
        seen.setdefault(_canonical([body["name"], body["datetime"]["created"], body["parameters"]]), body)
    return list(seen.values())


class OneOf:
    """An expected row that the contract leaves open between several candidates.

    CONTRACT 5 says where a conversation's attributes come from (the earliest
    start, else the latest end) but not which of several such events that are
    equally early (or late) and differ. The rows must still be a function of
    the set of events, so a test that feeds several orders also checks that
    each order gives the same row; this object only says which rows are
    allowed. It equals a row equal to any candidate, and another OneOf with the
    same candidates.
    """

    __hash__ = None

    def __init__(self, candidates: list[dict]):
        unique = {_canonical(_plain(c)): c for c in candidates}
        self.candidates = [unique[k] for k in sorted(unique)]

    def __eq__(self, other):
        if isinstance(other, OneOf):
            return [_canonical(_plain(c)) for c in self.candidates] == [_canonical(_plain(c))
                                                                         for c in other.candidates]
        return any(other == c for c in self.candidates)

    def __repr__(self) -> str:
        return f"OneOf({self.candidates!r})"


def _plain(row: dict) -> dict:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


_ATTRS = ("type", "operator_id", "website_id", "group_id")


def conversations(bodies, tz: str = "UTC") -> dict[int, dict | OneOf]:
    """Per conversation: the earliest start, the latest end, and the attributes
    of the start (several starts: the earliest), of the end while no start is
    known (several ends: the latest). Equal times the contract does not order:
    a OneOf of the rows each tied event would give. Nothing here depends on
    the order of `bodies`."""
    by_conversation: dict[int, list[tuple[dt.datetime, str, dict]]] = {}
    for body in distinct(b for b in bodies if b["name"] in ("conversation.start", "conversation.end")):
        p = body["parameters"]
        by_conversation.setdefault(p["conversation_id"], []).append(
            (_when(body["datetime"]["created"], tz), body["name"].split(".")[1], p))
    rows: dict[int, dict | OneOf] = {}
    for cid, events in by_conversation.items():
        starts = [(at, p) for at, kind, p in events if kind == "start"]
        ends = [(at, p) for at, kind, p in events if kind == "end"]
        started_at = min((at for at, _ in starts), default=None)
        ended_at = max((at for at, _ in ends), default=None)
        if starts:
            sources = [{**{k: p.get(k) for k in _ATTRS}, "custom_data": p.get("custom_data")}
                       for at, p in starts if at == started_at]
        else:
            sources = [{**{k: p.get(k) for k in _ATTRS}, "custom_data": None} for at, p in ends if at == ended_at]
        both = started_at is not None and ended_at is not None
        times = {"started_at": started_at, "ended_at": ended_at,
                 "duration_seconds": (ended_at - started_at).total_seconds() if both else None}
        candidates = OneOf([{**attrs, **times} for attrs in sources]).candidates
        rows[cid] = candidates[0] if len(candidates) == 1 else OneOf(candidates)
    return rows


def operator_sessions(bodies, tz: str = "UTC") -> list[tuple]:
    """Sorted (operator_id, login_at, logout_at) rows."""
    by_operator: dict[int, list[tuple[dt.datetime, str]]] = {}
    for body in distinct(b for b in bodies if b["name"] in ("operator.login", "operator.logout")):
        by_operator.setdefault(body["parameters"]["operator_id"], []).append(
            (_when(body["datetime"]["created"], tz), body["name"].split(".")[1]))
    rows = []
    for op, events in by_operator.items():
        times = sorted({at for at, _ in events})
        open_session = None  # index into rows of the session open now
        for at in times:
            logins = [k for t, k in events if t == at and k == "login"]
            logouts = [k for t, k in events if t == at and k == "logout"]
            # Ties: the logout comes first when a session is open just before, else the login.
            sequence = logouts + logins if open_session is not None else logins + logouts
            for kind in sequence:
                if kind == "login":
                    rows.append([op, at, None])
                    open_session = len(rows) - 1
                elif open_session is not None:
                    rows[open_session][2] = at
                    open_session = None
                else:
                    rows.append([op, None, at])
    return sorted((tuple(r) for r in rows), key=session_order)


def session_order(row: tuple) -> tuple:
    """A total order on (operator_id, login_at, logout_at) rows with NULLs."""
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    op, login, logout = row[:3]
    return (op, login is not None, login or far, logout or far)


def read_tables(conn) -> tuple[dict[int, dict], list[tuple]]:
    """The same shapes, read from the database."""
    with conn.cursor() as cur:
        cur.execute("""SELECT conversation_id, type, operator_id, website_id, group_id, custom_data,
                              started_at, ended_at, duration_seconds FROM conversations""")
        convs = {
            r[0]: {"type": r[1], "operator_id": r[2], "website_id": r[3], "group_id": r[4], "custom_data": r[5],
                   "started_at": r[6], "ended_at": r[7], "duration_seconds": r[8]}
            for r in cur.fetchall()
        }
        cur.execute("SELECT operator_id, login_at, logout_at FROM operator_sessions")
        sessions = sorted(cur.fetchall(), key=session_order)
    return convs, sessions
