"""The expected tables for a set of events, straight from CONTRACT 5.

Deliberately naive and independent of the workers: no SQL, no incremental
windows, no merging; it replays the distinct events in `created` order.
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo


def _when(text: str, tz: str) -> dt.datetime:
    if len(text) == 19 and text[10] == " ":
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(tz)).astimezone(dt.UTC)
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def distinct(bodies) -> list[dict]:
    """One body per event: same name, same created text, equal parameters."""
    seen = {}
    for body in bodies:
        identity = json.dumps([body["name"], body["datetime"]["created"], body["parameters"]], sort_keys=True)
        seen.setdefault(identity, body)
    return list(seen.values())


def conversations(bodies, tz: str = "UTC") -> dict[int, dict]:
    rows: dict[int, dict] = {}
    events = sorted(distinct(b for b in bodies if b["name"].startswith("conversation.")),
                    key=lambda b: _when(b["datetime"]["created"], tz))
    for body in events:
        p = body["parameters"]
        at = _when(body["datetime"]["created"], tz)
        row = rows.setdefault(p["conversation_id"], {"started_at": None, "ended_at": None, "has_start": False})
        attrs = {k: p.get(k) for k in ("type", "operator_id", "website_id", "group_id")}
        if body["name"] == "conversation.start":
            if row["started_at"] is None or at < row["started_at"]:
                row["started_at"] = at
                row.update(attrs, custom_data=p.get("custom_data"))
            row["has_start"] = True
        else:
            if row["ended_at"] is None or at > row["ended_at"]:
                row["ended_at"] = at
                if not row["has_start"]:
                    row.update(attrs, custom_data=None)
    for row in rows.values():
        del row["has_start"]
        both = row["started_at"] and row["ended_at"]
        row["duration_seconds"] = (row["ended_at"] - row["started_at"]).total_seconds() if both else None
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
