"""Pairing an operator's logins and logouts into desk sessions (CONTRACT 5).

A pure function, so that the rule is in one readable place.
"""

from __future__ import annotations

import datetime as dt
from itertools import groupby

Session = tuple[dt.datetime | None, dt.datetime | None]


def pair_sessions(events: list[tuple[dt.datetime, str]], initially_open: bool = False) -> list[Session]:
    """Sessions from `(at, 'login'|'logout')` events.

    Each login opens a session; the first logout after it closes it unless a
    login comes first; a logout that closes nothing is a session without a
    login. At equal times, logouts go first when a session is open just
    before, else logins do (a zero-length session).

    `initially_open` says that a session opened before these events is still
    open; the logout that closes it yields no row (that row exists already).
    """
    sessions: list[list[dt.datetime | None]] = []
    open_index: int | None = -1 if initially_open else None  # -1: the session before the window
    for at, group in groupby(sorted(events), key=lambda e: e[0]):
        kinds = [kind for _, kind in group]
        logins, logouts = kinds.count("login"), kinds.count("logout")
        if open_index is not None:
            order = ["logout"] * logouts + ["login"] * logins
        else:
            order = ["login"] * logins + ["logout"] * logouts
        for kind in order:
            if kind == "login":
                sessions.append([at, None])
                open_index = len(sessions) - 1
            elif open_index is None:
                sessions.append([None, at])
            else:
                if open_index >= 0:
                    sessions[open_index][1] = at
                open_index = None
    return [(login, logout) for login, logout in sessions]
