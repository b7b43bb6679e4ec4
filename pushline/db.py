"""PostgreSQL connections and migrations."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import psycopg2.extensions

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# Errors after which the same work may succeed later: the server went away,
# restarted, or chose this transaction as a deadlock/serialization victim.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg2.OperationalError, psycopg2.InterfaceError)


def connect(url: str, application_name: str = "pushline") -> psycopg2.extensions.connection:
    conn = psycopg2.connect(
        url,
        connect_timeout=5,
        application_name=application_name,
        # Notice a dead server within ~30 s instead of hanging on a socket.
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )
    return conn


def migrate(url: str, timezone: str) -> list[str]:
    """Apply pending migrations (idempotent); returns the ids applied now."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [m.id for m in pending]
    conn = connect(url, "pushline-migrate")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE pushline_config SET timezone = %s", (timezone,))
    finally:
        conn.close()
    return applied
