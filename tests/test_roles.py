"""Least privilege: each tier's login role, made by `pushline roles`, can do its
job and nothing else; the web tier reads no payload."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from tests.conftest import ROOT, TOKEN, query
from tests.helpers import drain, enqueue, login, logout

DENIED = psycopg2.errors.InsufficientPrivilege


def as_login(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port or 5432}"))


@pytest.fixture(scope="module")
def logins(database_url):
    passwords = {v: secrets.token_hex(8) for v in ("PUSHLINE_WEB_DB_PASSWORD", "PUSHLINE_WORKER_DB_PASSWORD",
                                                    "PUSHLINE_ANALYST_DB_PASSWORD")}
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **passwords}
    out = subprocess.run([sys.executable, "-m", "pushline.cli", "roles"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["login_roles"] == ["pushline_web_login", "pushline_worker_login", "analyst_sample"]
    again = subprocess.run([sys.executable, "-m", "pushline.cli", "roles"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # idempotent: ops run it after every password change
    return {"web": as_login(database_url, "pushline_web_login", passwords["PUSHLINE_WEB_DB_PASSWORD"]),
            "worker": as_login(database_url, "pushline_worker_login", passwords["PUSHLINE_WORKER_DB_PASSWORD"]),
            "analyst": as_login(database_url, "analyst_sample", passwords["PUSHLINE_ANALYST_DB_PASSWORD"])}


def can(url: str, statement: str) -> bool:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
        return True
    except DENIED:
        return False
    finally:
        conn.rollback()
        conn.close()


def test_the_web_login_can_spool_and_read_figures_but_no_payload(logins, db):
    web = logins["web"]
    assert can(web, "INSERT INTO spool (item) VALUES ('x')")
    for allowed in ("SELECT * FROM pushline_status_figures()", "SELECT * FROM pushline_latest_rejections(5)",
                    "SELECT * FROM pushline_events_per_minute()", "SELECT pushline_spool_oldest()",
                    "SELECT count(*) FROM conversation_daily", "SELECT count(*) FROM conversation_v2_daily"):
        assert can(web, allowed), allowed
    for denied in ("SELECT payload FROM events", "SELECT item FROM spool", "DELETE FROM spool",
                   "UPDATE spool SET item = 'y'", "SELECT * FROM conversations", "SELECT * FROM operator_sessions",
                   "SELECT * FROM conversations_v2", "SELECT * FROM satisfaction",
                   "INSERT INTO events (name) VALUES ('x')"):
        assert not can(web, denied), denied


def test_the_web_tier_runs_as_its_login(logins, settings, db, rq):
    from web import create_app

    client = create_app(dataclasses.replace(settings, database_url=logins["web"])).test_client()
    assert client.get("/readyz").status_code == 200
    data = client.get("/status.json").get_json()
    assert data["database"] == "up" and data["rejected"] == 0 and data["oldest_pending_includes_spool"]
    assert client.post(f"/push/{TOKEN}", json=login(5, "2014-01-01 08:00:00")).status_code == 202


def test_the_worker_login_does_the_work_and_retention_but_no_ddl(logins, settings, db, rq):
    from workers.consumer import Consumer
    from workers.handlers import registry_with_handlers
    from workers.maintenance import prune_events

    db.cursor().execute("TRUNCATE operator_horizons")
    worker_settings = dataclasses.replace(settings, database_url=logins["worker"])
    loop = Consumer(worker_settings, registry_with_handlers(), name="worker-login")
    try:
        enqueue(loop.queue, login(7, "2014-01-01 08:00:00"), logout(7, "2014-01-01 09:00:00"),
                login(7, "2024-01-01 08:00:00"))
        assert drain(loop) == 3
        with loop.conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == "pushline_worker_login"
        loop.conn.rollback()
    finally:
        loop.close()
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 3)]
    # Retention as a task runs as the worker: it deletes rows, it cannot drop partitions.
    import datetime as dt

    assert prune_events(worker_settings, dt.datetime(2020, 1, 1, tzinfo=dt.UTC)) == {"deleted_events": 2}
    assert query(db, "SELECT count(*) FROM events") == [(1,)]
    assert query(db, "SELECT duration_seconds FROM operator_sessions WHERE login_at < '2020-01-01'") == [(3600.0,)]
    for denied in ("DROP TABLE spool", "ALTER TABLE events DETACH PARTITION events_before", "CREATE ROLE x",
                   "GRANT pushline_worker TO analyst"):
        assert not can(logins["worker"], denied), denied


def test_the_analyst_login_reads_and_writes_nothing(logins, db):
    analyst = logins["analyst"]
    for allowed in ("SELECT count(*) FROM events", "SELECT count(*) FROM conversations_v2",
                    "SELECT count(*) FROM operator_daily", "SELECT count(*) FROM user_daily"):
        assert can(analyst, allowed), allowed
    for denied in ("INSERT INTO spool (item) VALUES ('x')", "DELETE FROM events",
                   "UPDATE conversations SET type = 'x'", "SELECT * FROM user_events", "TRUNCATE satisfaction"):
        assert not can(analyst, denied), denied


def test_roles_skips_a_login_without_a_password(database_url):
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pushline.cli", "roles"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["login_roles"] == []
