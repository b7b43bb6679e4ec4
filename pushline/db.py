"""PostgreSQL connections and migrations: the one place sessions are made.

Every session is bounded on the server (statement, lock and idle-in-transaction
timeouts, so that no worker holds locks behind a paused peer and no statement
runs forever) and on the client (connect timeout, TCP keepalives). A server
that stops answering without refusing (SIGSTOP, a lost network) still ACKs
TCP from its kernel, so no socket option notices it: the web tier, which must
answer a push within seconds, uses `BoundedSession` (asynchronous libpq, every
wait under a deadline). Workers need COPY, which asynchronous connections
cannot do; a worker stuck on a hung server is caught by its watchdog
(workers/watchdog.py) instead.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# SQLSTATE classes after which the same work may succeed later: the connection
# failed (08), the transaction was a deadlock/serialization victim (40), the
# server lacked resources (53), a statement was cancelled or the server shut
# down (57), an I/O error (58); and a lock wait that timed out (55P03).
# psycopg2 files others under OperationalError too (54xxx "program limit
# exceeded": an index row too large for a 6 kB event name), which are the
# data's fault: retrying them would loop on the same item forever.
_TRANSIENT_CLASSES = frozenset(("08", "40", "53", "57", "58"))


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    if not isinstance(exc, psycopg2.OperationalError):
        return isinstance(exc, psycopg2.Error) and getattr(exc, "pgcode", None) in _TRANSIENT_CODES
    code = exc.pgcode
    return code is None or code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES  # None: no server reply


# A lock wait that timed out; a read-only session (a standby we were pointed at during
# a failover: the data is fine, the server is not the primary yet; psycopg2 files it
# under InternalError, not OperationalError, so it is checked by code whatever the class).
_TRANSIENT_CODES = frozenset(("55P03", "25006"))


@dataclass(frozen=True)
class Timeouts:
    statement_ms: int
    lock_ms: int
    idle_in_transaction_ms: int
    connect_seconds: int = 5

    def options(self) -> str:
        # TimeZone=UTC: timestamptz values come back in UTC, so any instant in
        # years 1-9999 UTC is readable by Python whatever the server's default zone.
        # jit=off (as migration 0019 sets for the database, but whatever a role or
        # server says): Pushline's statements are index lookups of a few rows each,
        # yet a parameter's inequality (`at >= t0`) is guessed at a third of a
        # user's history, so a batch of a few hundred users passed jit_above_cost
        # and spent some 100 ms compiling what runs in a few.
        return (f"-c statement_timeout={self.statement_ms} -c lock_timeout={self.lock_ms}"
                f" -c idle_in_transaction_session_timeout={self.idle_in_transaction_ms} -c TimeZone=UTC"
                " -c jit=off")


# A batch is a handful of set-based statements of milliseconds each; 30 s means
# something is wrong. Locks are held for a batch's duration, so 10 s of waiting
# means a peer is stuck: give up, retry the batch later.
WORKER = Timeouts(statement_ms=30_000, lock_ms=10_000, idle_in_transaction_ms=30_000)
# The ack path's fallback and the status page: a push is answered within seconds.
WEB = Timeouts(statement_ms=2_000, lock_ms=1_000, idle_in_transaction_ms=5_000, connect_seconds=2)
# Operator commands (replay, prune, stats): long pages are fine, waiting on locks is not.
TOOL = Timeouts(statement_ms=600_000, lock_ms=10_000, idle_in_transaction_ms=60_000)
# Partition DDL: never queue writers behind an ACCESS EXCLUSIVE request for long.
DDL_LOCK_TIMEOUT = "5s"
# pg_advisory_xact_lock(PUSHLINE_LOCKS, n): a key space of our own, so that no
# other application sharing the database takes the same advisory locks.
PUSHLINE_LOCKS = 745100
PARTITION_DDL_LOCK = 1

_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class Session(psycopg2.extensions.connection):
    """A connection that knows which staging tables (pushline.pgcopy) hold rows
    in its open transaction, so that a batch empties one only when it staged it
    before in that transaction, instead of before every COPY."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.staging_made: frozenset[str] = frozenset()  # created in a committed transaction of this session
        self.staged: set[str] = set()

    def commit(self) -> None:
        super().commit()
        self.staged.clear()  # ON COMMIT DELETE ROWS emptied them

    def rollback(self) -> None:
        super().rollback()
        self.staged.clear()  # their rows went with the transaction


def connect(url: str, application_name: str = "pushline",
            timeouts: Timeouts = WORKER) -> Session:
    return psycopg2.connect(url, connect_timeout=timeouts.connect_seconds, application_name=application_name,
                            options=timeouts.options(), connection_factory=Session, **_KEEPALIVES)


class Timeout(psycopg2.OperationalError):
    """The server did not answer within the deadline; the session is closed."""


class BoundedSession:
    """An autocommit session whose every wait on the server has a deadline.

    Asynchronous libpq: we poll the socket ourselves, so a paused server costs
    at most `io_seconds` per call instead of forever. Each statement commits on
    its own (asynchronous connections are autocommit), which is what the spool
    insert wants: it is durable once `execute` returns.
    """

    def __init__(self, url: str, application_name: str, io_seconds: float = 2.0, timeouts: Timeouts = WEB):
        self.io_seconds = io_seconds
        self._lock = threading.Lock()  # one statement at a time: shared by a process's threads
        self.conn = psycopg2.connect(url, async_=True, application_name=application_name,
                                     options=timeouts.options(), **_KEEPALIVES)
        self._wait()

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    def execute(self, sql: str, params=None):
        with self._lock:
            cur = self.conn.cursor()
            cur.execute(sql, params)
            self._wait()
            return cur

    def close(self) -> None:
        self.conn.close()

    def _wait(self) -> None:
        deadline = time.monotonic() + self.io_seconds
        while True:
            try:
                state = self.conn.poll()
            except psycopg2.Error:
                self.conn.close()
                raise
            if state == psycopg2.extensions.POLL_OK:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.conn.close()
                raise Timeout(f"PostgreSQL did not answer within {self.io_seconds:g}s")
            fd = self.conn.fileno()
            if state == psycopg2.extensions.POLL_READ:
                select.select([fd], [], [], remaining)
            elif state == psycopg2.extensions.POLL_WRITE:
                select.select([], [fd], [], remaining)
            else:  # pragma: no cover - libpq reports only the states above
                raise psycopg2.OperationalError(f"unexpected poll state {state}")


def migrate(url: str, timezone: str) -> list[str]:
    """Apply pending migrations (idempotent); returns the ids applied now."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [m.id for m in pending]
    conn = connect(url, "pushline-migrate", TOOL)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = %s", (timezone,))
    finally:
        conn.close()
    from pushline.partitions import roll

    roll(url)
    return applied
