"""Who gets in, and what each database role may do."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import uuid

import psycopg2
import pytest

from pushline.config import ConfigError, Settings
from pushline.envelope import Envelope
from pushline.queue import EventQueue
from tests.conftest import PARIS_TOKEN, ROOT, TOKEN, make_settings, query, settings_env
from tests.helpers import conversation, drain, enqueue, login, logout
from tests.test_http import LOGIN
from web import create_app
from workers import housekeeping
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers

SECRET = "paris-signing-secret-0123456789"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def signed_client(database_url, redis_url, rq):
    settings = make_settings(database_url, redis_url, PUSH_SIGNING_SECRETS=f"paris:{SECRET}")
    return create_app(settings).test_client(), EventQueue(rq, settings.queue_prefix)


def post(client, body: bytes, token: str, signature: str | None = None):
    headers = {"X-iAdvize-Signature": signature} if signature is not None else {}
    return client.post(f"/push/{token}", data=body, content_type="application/json", headers=headers)


def test_a_signed_source_accepts_a_valid_signature(signed_client):
    client, queue = signed_client
    body = json.dumps(LOGIN).encode()
    assert post(client, body, PARIS_TOKEN, sign(body)).status_code == 202
    assert queue.depth() == 1


@pytest.mark.parametrize("signature", [None, "", "sha256=", "sha1=abc", sign(b"another body"),
                                       sign(json.dumps(LOGIN).encode(), "wrong-secret-0123456789")])
def test_a_signed_source_refuses_a_missing_or_bad_signature(signed_client, signature):
    client, queue = signed_client
    resp = post(client, json.dumps(LOGIN).encode(), PARIS_TOKEN, signature)
    assert resp.status_code == 401
    assert "Signature" in resp.get_json()["error"]
    assert queue.depth() == 0


def test_a_replayed_signed_body_with_one_tampered_byte_is_refused(signed_client):
    client, queue = signed_client
    body = json.dumps(LOGIN).encode()
    signature = sign(body)
    tampered = body.replace(b'"operator_id": 1', b'"operator_id": 7')
    assert tampered != body
    assert post(client, tampered, PARIS_TOKEN, signature).status_code == 401
    assert post(client, body, PARIS_TOKEN, signature).status_code == 202  # the genuine one, replayed, still is
    assert queue.depth() == 1


def test_the_signature_is_checked_on_raw_bytes_before_parsing(signed_client):
    client, queue = signed_client
    assert post(client, b"{not json", PARIS_TOKEN, "sha256=00").status_code == 401
    assert queue.depth() == 0


def test_sources_without_a_secret_need_no_signature(signed_client):
    client, queue = signed_client
    assert post(client, json.dumps(LOGIN).encode(), TOKEN).status_code == 202
    assert queue.depth() == 1


@pytest.mark.parametrize(
    "tokens, secrets, words",
    [
        ("", "", "PUSH_TOKENS is empty"),
        ("short-token", "", "shorter than 16"),
        (f"paris:{PARIS_TOKEN}", f"paris:{PARIS_TOKEN}", "equals a push token"),
        (f"paris:{PARIS_TOKEN}", "lyon:some-secret-0123456789", "no token has source"),
    ],
)
def test_production_refuses_unsafe_configuration(tokens, secrets, words):
    settings = Settings.from_mapping({"PUSH_TOKENS": tokens, "PUSH_SIGNING_SECRETS": secrets})
    with pytest.raises(ConfigError, match=words):
        settings.check_production()


@pytest.mark.slow
def test_pushline_web_refuses_a_short_token_with_one_line(settings):
    env = settings_env(settings)
    env["PUSH_TOKENS"] = "tooshort"
    result = subprocess.run([str(ROOT / "bin" / "pushline"), "web"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "shorter than 16" in result.stderr


def test_custom_data_with_too_many_keys_is_rejected_with_a_reason(database_url, redis_url, db, rq):
    settings = make_settings(database_url, redis_url, MAX_CUSTOM_DATA_KEYS="3")
    loop = Consumer(settings, registry_with_handlers(), name="limits")
    enqueue(loop.queue, conversation("start", 1, "2014-01-01 09:00:00", custom_data={str(i): i for i in range(4)}),
            conversation("start", 2, "2014-01-01 09:00:00", custom_data={str(i): i for i in range(3)}))
    drain(loop)
    loop.close()
    rows = sorted(query(db, "SELECT payload->'parameters'->>'conversation_id', status, error FROM events"))
    assert rows[0][:2] == ("1", "rejected") and "parameters.custom_data" in rows[0][2] and "3 keys" in rows[0][2]
    assert rows[1][:2] == ("2", "processed")


def as_role(settings, role: str, sql: str) -> tuple[int, list | None]:
    """Run `sql` as `role` (checked) in a transaction that is rolled back: (rowcount, rows or None)."""
    conn = psycopg2.connect(settings.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET ROLE {role}")
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == role
            cur.execute(sql)
            return cur.rowcount, cur.fetchall() if cur.description else None
    finally:
        conn.rollback()
        conn.close()


SEED = [login(1, "2014-01-01 09:00:00"), logout(1, "2014-01-01 10:00:00"),
        conversation("start", 1, "2014-01-01 09:10:00"), conversation("end", 1, "2014-01-01 09:20:00")]


@pytest.fixture
def seeded(settings, db, rq):
    """Every table the roles are about holds rows, stored by the real drain loop, whatever ran before:
    a read that returns them proves the grant, a write that changes them proves it too."""
    db.cursor().execute("TRUNCATE operator_horizons")  # prune's; the db fixture leaves it
    loop = Consumer(settings, registry_with_handlers(), name="seed")
    enqueue(loop.queue, *SEED)
    drain(loop)
    loop.close()
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 4)]
    assert query(db, "SELECT count(*) FROM operator_sessions")[0][0] == 1
    assert query(db, "SELECT count(*) FROM conversations")[0][0] == 1
    return db


@pytest.mark.parametrize("sql", [
    "INSERT INTO operator_sessions (operator_id, login_at) VALUES (1, now())",
    "UPDATE events SET status = 'processed'",
    "DELETE FROM conversations",
    "TRUNCATE operator_sessions",
    "INSERT INTO spool (item) VALUES ('x')",
    "CREATE TABLE mine (id int)",
])
def test_analyst_can_write_nothing(settings, seeded, sql):
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_role(settings, "analyst", sql)


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM events", "SELECT * FROM conversations",
                                 "SELECT * FROM operator_sessions", "SELECT * FROM operator_daily",
                                 "SELECT * FROM conversation_daily", "SELECT * FROM operator_presence",
                                 "SELECT * FROM conversation_concurrency"])
def test_analyst_reads_the_tables_and_views(settings, seeded, sql):
    _, rows = as_role(settings, "analyst", sql)
    expected = query(seeded, sql)
    assert expected and expected != [(0,)]  # something to read
    assert sorted(rows, key=repr) == sorted(expected, key=repr)


def test_web_role_writes_only_the_spool(settings, seeded):
    assert as_role(settings, "pushline_web", "INSERT INTO spool (item) VALUES ('x')")[0] == 1
    # The status page's figures, through functions that expose no payload (0016).
    assert as_role(settings, "pushline_web", "SELECT rejected FROM pushline_status_figures()")[1] == [(0,)]
    for sql in ("SELECT count(*) FROM events", "SELECT payload FROM events",
                "INSERT INTO conversations (conversation_id) VALUES (1)", "UPDATE events SET error = 'x'",
                "DELETE FROM events", "SELECT * FROM spool", "SELECT * FROM operator_sessions",
                "DELETE FROM spool", "SELECT * FROM conversations"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            as_role(settings, "pushline_web", sql)


def test_worker_role_writes_its_tables_and_nothing_else(settings, seeded):
    seeded.cursor().execute("INSERT INTO spool (item) VALUES ('x')")
    assert as_role(settings, "pushline_worker", "DELETE FROM operator_sessions")[0] == 1
    assert as_role(settings, "pushline_worker", "UPDATE conversations SET ended_at = now()")[0] == 1
    assert as_role(settings, "pushline_worker", "UPDATE events SET error = NULL")[0] == 4
    assert as_role(settings, "pushline_worker", "SELECT convert_from(item, 'UTF8') FROM spool")[1] == [("x",)]
    assert as_role(settings, "pushline_worker", "DELETE FROM spool")[0] == 1
    for sql in ("DROP TABLE events", "CREATE TABLE mine (id int)", "TRUNCATE events",
                "UPDATE pushline_config SET timezone = 'UTC'"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            as_role(settings, "pushline_worker", sql)


def test_the_worker_runs_with_only_the_worker_role(settings, db, rq):
    from tests import oracle

    # Nothing left by another test may decide the sessions: a prune's horizon would hide them.
    db.cursor().execute("TRUNCATE operator_horizons")
    loop = Consumer(settings, registry_with_handlers(), name="least-privilege")
    try:
        with loop.conn.cursor() as cur:
            cur.execute("SET SESSION ROLE pushline_worker")
        loop.conn.commit()
        bodies = [*SEED, login(2, "2014-01-01 11:00:00")]
        enqueue(loop.queue, *bodies[:-1])
        # One push reached the fallback while Redis was away: the worker forwards it too.
        item = Envelope(uuid.uuid4().hex, "default", time.time(), json.dumps(bodies[-1]).encode()).encode()
        db.cursor().execute("INSERT INTO spool (item) VALUES (%s)", (item,))
        assert housekeeping.forward_spool(loop.conn, loop.queue) == 1  # beat's task, on the worker's session
        assert drain(loop) == len(bodies)
        with loop.conn.cursor() as cur:  # the very session that did the work
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == "pushline_worker"
        loop.conn.rollback()
    finally:
        loop.close()
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", len(bodies))]
    assert query(db, "SELECT count(*) FROM spool") == [(0,)]
    convs, sessions = oracle.read_tables(db)
    assert convs == oracle.conversations(bodies) and len(convs) == 1
    assert sessions == oracle.operator_sessions(bodies) and len(sessions) == 2


def test_an_unhandled_error_is_logged_without_the_token(settings, caplog):
    app = create_app(settings)

    @app.post("/push/<token>/explode")
    def explode(token):
        raise RuntimeError("an unexpected bug")

    resp = app.test_client().post(f"/push/{TOKEN}/explode")
    assert resp.status_code == 500 and TOKEN not in resp.get_data(as_text=True)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/push/<redacted>/explode" in logged
    assert TOKEN not in logged


def test_duplicate_keys_are_accepted_and_the_last_one_wins(settings, db, rq):
    client = create_app(settings).test_client()
    body = b'{"name": "operator.login", "name": "operator.logout", "datetime": {"created": "2014-01-01 00:00:00",' \
           b' "sent": "2014-01-01 00:00:00"}, "parameters": {"operator_id": 3}}'
    assert client.post(f"/push/{TOKEN}", data=body, content_type="application/json").status_code == 202
    loop = Consumer(settings, registry_with_handlers(), name="dup-keys")
    drain(loop)
    loop.close()
    assert query(db, "SELECT name, status FROM events") == [("operator.logout", "processed")]
