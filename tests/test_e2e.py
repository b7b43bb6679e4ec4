"""Through real processes: gunicorn serving the web tier, a Celery worker draining."""

from __future__ import annotations

import http.client as httplib
import json
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests import http_client as http
from tests.conftest import TOKEN, query, settings_env, wait_for
from tests.test_schemas import fixture

pytestmark = pytest.mark.slow

SEED = ("operator.login", "operator.logout", "conversation.start", "conversation.end")


def push(base: str, body, token: str = TOKEN, **kw):
    return http.post_json(f"{base}/push/{token}", body, **kw)


def processed_count(db) -> int:
    return query(db, "SELECT count(*) FROM events")[0][0]


def test_seed_examples_end_as_the_right_rows(pipeline, db):
    for name in SEED:
        resp = push(pipeline, open_fixture(name))
        assert resp.status == 202, resp.body
        assert len(resp.json()["id"]) == 32
    wait_for(lambda: processed_count(db) == 4, what="4 events stored")
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 4)]
    assert query(db, "SELECT conversation_id, type, started_at::text, ended_at::text, duration_seconds"
                     " FROM conversations") == [(1, "chat", "2014-01-01 00:00:00+00", "2014-01-01 00:00:00+00", 0)]
    assert query(db, "SELECT operator_id, login_at::text, logout_at::text, duration_seconds FROM operator_sessions") \
        == [(1, "2014-01-01 00:00:00+00", "2014-01-01 00:00:00+00", 0)]


def open_fixture(name: str) -> bytes:
    """The fixture file's own bytes, whitespace and all, as iAdvize would send them."""
    from tests.test_schemas import FIXTURES

    return (FIXTURES / f"{name}.json").read_bytes()


def test_seed_start_as_printed_is_rejected_and_unknown_name_unhandled(pipeline, db):
    assert push(pipeline, open_fixture("conversation.start.as-printed")).status == 202
    assert push(pipeline, {"name": "operator.pause", "datetime": {"created": "2014-01-01 00:00:00"},
                           "parameters": {"operator_id": 1}}).status == 202
    wait_for(lambda: processed_count(db) == 2, what="2 events stored")
    rows = dict((n, (s, e)) for n, s, e in query(db, "SELECT name, status, error FROM events"))
    assert rows["conversation.start"][0] == "rejected"
    assert "type" in rows["conversation.start"][1]
    assert rows["operator.pause"][0] == "unhandled"


def test_same_event_twice_with_other_sent_is_one_row_with_two_deliveries(pipeline, db):
    first = fixture("conversation.end")
    second = fixture("conversation.end")
    second["datetime"]["sent"] = "2014-01-01 00:05:00"
    assert push(pipeline, first).status == 202
    assert push(pipeline, second).status == 202
    wait_for(lambda: query(db, "SELECT deliveries FROM events") == [(2,)], what="deliveries = 2")
    assert query(db, "SELECT count(*), min(ended_at)::text FROM conversations") == [(1, "2014-01-01 00:00:00+00")]


@pytest.mark.parametrize(
    "status, body, headers, token, words",
    [
        (400, b"{", {}, TOKEN, "not valid JSON"),
        (400, b"[" * 10_000 + b"]" * 10_000, {}, TOKEN, "deeper"),
        (400, b"\xff\xfe", {}, TOKEN, "UTF-8"),
        (400, b"", {}, TOKEN, "empty"),
        (401, b'{"name": "x"}', {}, "wrong-token-0000000000", "token"),
        (415, b"<event/>", {"Content-Type": "application/xml"}, TOKEN, "XML"),
    ],
)
def test_edge_errors_through_gunicorn(pipeline, status, body, headers, token, words):
    resp = http.request("POST", f"{pipeline}/push/{token}", body,
                        {"Content-Type": "application/json", **headers})
    assert resp.status == status
    assert words in resp.json()["error"]


def test_chunked_body_over_the_limit_is_413_through_gunicorn(pipeline):
    parts = urlsplit(pipeline)
    conn = httplib.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def chunks():
        yield b'{"name": "x", "pad": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'

    conn.request("POST", f"/push/{TOKEN}", body=chunks(), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    assert "larger than" in json.loads(resp.read())["error"]
    conn.close()


def test_health_and_readiness_through_gunicorn(pipeline):
    assert http.get(f"{pipeline}/healthz").status == 200
    assert http.get(f"{pipeline}/readyz").status == 200


def test_token_is_not_in_the_access_log(settings, tmp_path):
    from tests.conftest import start_web

    web, base = start_web(settings, tmp_path, PUSHLINE_ACCESS_LOG="1")  # one setting away
    try:
        assert push(base, {"name": "x"}).status == 202
    finally:
        web.stop()
    text = web.output()
    assert '"gunicorn.access"' in text and "/push/<redacted>" in text
    assert TOKEN not in text


def test_analyst_role_can_read_but_not_write(settings, db, rq):
    from tests.helpers import conversation, drain, enqueue, login, logout
    from workers.consumer import Consumer
    from workers.handlers import registry_with_handlers

    # Its own rows, stored by the real drain loop: the reads below must return them.
    # Ids of its own: the shared pipeline's worker may store other tests' late events meanwhile.
    me = 770_001
    db.cursor().execute("TRUNCATE operator_horizons")
    loop = Consumer(settings, registry_with_handlers(), name="analyst-seed")
    enqueue(loop.queue, login(me, "2014-01-01 09:00:00"), logout(me, "2014-01-01 10:00:00"),
            conversation("start", me, "2014-01-01 09:10:00", op=me),
            conversation("end", me, "2014-01-01 09:20:00", op=me))
    drain(loop)
    loop.close()
    reads = (f"SELECT conversation_id, type, started_at, ended_at FROM conversations WHERE conversation_id = {me}",
             f"SELECT operator_id, login_at, logout_at FROM operator_sessions WHERE operator_id = {me}",
             "SELECT name, status FROM events WHERE (payload->'parameters'->>'operator_id')::bigint"
             f" = {me} ORDER BY name",
             f"SELECT operator_id, day, sessions, online_seconds, conversations FROM operator_daily"
             f" WHERE operator_id = {me}")
    before = [query(db, sql) for sql in reads]
    assert all(before) and len(before[2]) == 4

    conn = psycopg2.connect(settings.database_url)
    conn.autocommit = True  # a refused statement aborts no transaction: each is tried on its own
    try:
        with conn.cursor() as cur:
            cur.execute("SET ROLE analyst")
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("analyst",)
            for sql, rows in zip(reads, before, strict=True):
                cur.execute(sql)
                assert cur.fetchall() == rows, sql
            for sql in ("INSERT INTO conversations (conversation_id, type, operator_id, website_id, group_id,"
                        " started_at, attrs_from, attrs_created_at, attrs_event_key)"
                        " VALUES (2, 'chat', 1, 1, 1, now(), 'start', now(), gen_random_uuid())",
                        "UPDATE conversations SET type = 'call'",
                        "DELETE FROM operator_sessions",
                        "UPDATE events SET status = 'rejected', error = 'x'",
                        "TRUNCATE conversations"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(sql)
    finally:
        conn.close()
    assert [query(db, sql) for sql in reads] == before


def test_worker_logs_are_json_lines_with_the_event_id(pipeline, db, tmp_path_factory):
    assert push(pipeline, open_fixture("conversation.start.as-printed")).status == 202
    wait_for(lambda: processed_count(db) == 1, what="the event stored")
    [(event_id,)] = query(db, "SELECT id FROM events")
    log = next(tmp_path_factory.getbasetemp().glob("pipeline*/worker-w1.log"))

    def line():
        for raw in log.read_text().splitlines():
            if raw.startswith("{") and '"event stored as rejected"' in raw:
                record = json.loads(raw)
                if record.get("event_id") == event_id:
                    return record
        return None

    record = wait_for(line, what="the JSON log line")
    assert record["level"] == "INFO" and record["event_name"] == "conversation.start"
    assert len(record["event_key"]) == 32 and "parameters.type" in record["error"]


def test_the_access_log_is_off_by_default(settings, tmp_path):
    """High-volume deployments count pushes in /metrics; a line per push costs a quarter of the ack path."""
    from tests.conftest import start_web

    env = settings_env(settings)
    assert "PUSHLINE_ACCESS_LOG" not in env
    web, base = start_web(settings, tmp_path)
    try:
        assert push(base, {"name": "x"}).status == 202
        assert http.get(f"{base}/healthz").status == 200
    finally:
        web.stop()
    text = web.output()
    assert '"gunicorn.error"' in text  # the process did log (its start and stop)
    assert "gunicorn.access" not in text and "POST /push" not in text


def test_a_signed_webhook_through_gunicorn_with_headers_in_any_case(settings, tmp_path):
    """iAdvize signs with the token the app shows; header names have changed case over the years."""
    import hashlib
    import hmac

    from tests.conftest import start_web

    app_token = "the-token-iadvize-shows-in-the-app"
    web, base = start_web(settings, tmp_path, PUSH_SIGNING_SECRETS=f"default:{app_token}")
    body = (b'{"eventId": "6f0c2a4e-8d0b-4f0e-9a51-2c7de1f0b001", "eventType": "v2.conversation.pushed",'
            b' "platform": "ha", "projectId": 12, "clientId": 340,'
            b' "conversationId": "a3b1c9d0-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "operatorId": 4411, "channel": "CHAT",'
            b' "createdAt": "2024-03-05T09:12:44.120Z", "sentAt": "2024-03-05T09:12:44.410Z"}')
    good = "sha256=" + hmac.new(app_token.encode(), body, hashlib.sha256).hexdigest()

    def send(headers: dict, data: bytes = body) -> tuple[int, dict]:
        parts = urlsplit(base)
        conn = httplib.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("POST", f"/push/{TOKEN}", body=data, headers=headers)
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    try:
        for name in ("x-iadvize-signature", "X-iAdvize-Signature", "X-IADVIZE-SIGNATURE"):
            assert send({"Content-Type": "application/json", name: good})[0] == 202
        status, reply = send({"Content-Type": "application/json", "x-iadvize-signature": good.replace("a", "b")})
        assert status == 401 and "Signature" in reply["error"]
        assert send({"Content-Type": "application/json"})[0] == 401
        status, reply = send({"Content-Type": "application/x-www-form-urlencoded", "x-iadvize-signature": good},
                             b"eventType=v2.conversation.pushed&eventId=1")
        assert status == 415 and "choose JSON" in reply["error"]
    finally:
        web.stop()


def test_internal_port_through_gunicorn(settings, tmp_path):
    """Two real listeners: the figures on INTERNAL_PORT only, pushes on PORT only."""
    from tests.conftest import free_port, start_web

    internal = free_port()
    web, base = start_web(settings, tmp_path, INTERNAL_PORT=str(internal))
    inside = f"http://127.0.0.1:{internal}"
    try:
        assert push(base, {"name": "x"}).status == 202
        for path in ("/metrics", "/status.json"):
            assert http.get(base + path).status == 404
            assert http.get(inside + path).status == 200
        assert b"pushline_pushes_total" in http.get(inside + "/metrics").body
        assert http.get(base + "/healthz").status == http.get(inside + "/healthz").status == 200
    finally:
        web.stop()
