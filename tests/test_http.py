"""CONTRACT 3, one test per row of its table (and the health endpoints).

The Flask app runs in-process here, against the real Redis and PostgreSQL;
the end-to-end tests repeat the main rows through gunicorn.
"""

from __future__ import annotations

import io
import json

import pytest

from pushline.envelope import Envelope
from pushline.queue import EventQueue
from tests.conftest import PARIS_TOKEN, TOKEN, free_port, make_settings, query
from web import create_app

LOGIN = {
    "name": "operator.login",
    "datetime": {"created": "2014-01-01 00:00:00", "sent": "2014-01-01 00:00:01"},
    "parameters": {"operator_id": 1},
}


@pytest.fixture
def client(settings, rq):
    return create_app(settings).test_client()


def queued(settings, rq) -> list[Envelope]:
    return [Envelope.decode(raw) for raw in rq.lrange(EventQueue(rq, settings.queue_prefix).incoming, 0, -1)]


def post(client, body, token=TOKEN, content_type="application/json", **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/push/{token}", data=data, content_type=content_type, **kwargs)


def assert_error(resp, status: int, words: str):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    assert words in resp.get_json()["error"]


def test_accepted_event_is_queued_with_its_source_and_id(client, settings, rq):
    resp = post(client, LOGIN)
    assert resp.status_code == 202
    receipt = resp.get_json()["id"]
    [envelope] = queued(settings, rq)
    assert envelope.receipt_id == receipt
    assert envelope.source == "default"
    assert json.loads(envelope.body) == LOGIN


def test_token_with_a_source_name_tags_the_event(client, settings, rq):
    assert post(client, LOGIN, token=PARIS_TOKEN).status_code == 202
    assert [e.source for e in queued(settings, rq)] == ["paris"]


def test_bearer_header_works_like_the_path_token(client, settings, rq):
    resp = client.post("/push", data=json.dumps(LOGIN), content_type="application/json",
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 202
    assert len(queued(settings, rq)) == 1


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"name": "x"\xff}', "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'"operator.login"', "JSON object"),
        (b'{"datetime": {}}', "string 'name'"),
        (b'{"name": 12}', "string 'name'"),
        (b'{"name": "x", "v": NaN}', "NaN"),
        (b'{"name": "x", "v": "\\u0000"}', "\\u0000"),
        (b'{"name": "x", "v": "\\ud800"}', "surrogate"),
        (b'{"name": "x", "v": ' + b"[" * 32 + b"]" * 32 + b"}", "deeper than 32"),
        (b"[" * 10_000 + b"]" * 10_000, "deeper than 32"),
        (b'{"name": "x", "v": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}", "deeper than 32"),
    ],
    ids=["empty", "not-json", "not-utf8", "array", "string", "no-name", "name-not-string", "nan", "nul",
         "lone-surrogate", "depth-33", "depth-10000-array", "depth-10000-object"],
)
def test_bad_body_is_400_and_not_queued(client, settings, rq, body, words):
    assert_error(post(client, body), 400, words)
    assert queued(settings, rq) == []


def test_nesting_of_exactly_32_levels_is_accepted(client):
    body = b'{"name": "x", "v": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert post(client, body).status_code == 202


@pytest.mark.parametrize("token", ["wrong-token-0123456789", TOKEN[:-1], TOKEN + "x"])
def test_wrong_token_is_401(client, settings, rq, token):
    assert_error(post(client, LOGIN, token=token), 401, "token")
    assert queued(settings, rq) == []


def test_missing_token_is_the_same_401(client, settings, rq):
    missing = client.post("/push", data=json.dumps(LOGIN), content_type="application/json")
    wrong = post(client, LOGIN, token="nope")
    assert missing.status_code == wrong.status_code == 401
    assert missing.get_json() == wrong.get_json()
    bad_scheme = client.post("/push", data=json.dumps(LOGIN), content_type="application/json",
                             headers={"Authorization": f"Basic {TOKEN}"})
    assert bad_scheme.status_code == 401


def test_token_never_appears_in_an_error_body(client):
    for resp in (post(client, b"{", token=TOKEN), post(client, LOGIN, token=TOKEN + "zz")):
        assert TOKEN not in resp.get_data(as_text=True)


def test_body_over_max_is_413_before_reading(database_url, redis_url, rq):
    settings = make_settings(database_url, redis_url, MAX_BODY_BYTES="100")
    client = create_app(settings).test_client()
    big = {**LOGIN, "padding": "x" * 200}
    assert_error(post(client, big), 413, "larger than 100 bytes")
    small = post(client, {"name": "a"})
    assert small.status_code == 202


def test_body_without_length_over_max_is_413(database_url, redis_url, rq):
    settings = make_settings(database_url, redis_url, MAX_BODY_BYTES="100")
    client = create_app(settings).test_client()
    body = b'{"name": "x", "pad": "' + b"y" * 500 + b'"}'
    # A stream with no Content-Length, as a chunked request arrives in WSGI.
    resp = client.post(f"/push/{TOKEN}", input_stream=io.BytesIO(body), content_type="application/json",
                       environ_overrides={"wsgi.input_terminated": True})
    assert_error(resp, 413, "larger than 100 bytes")


@pytest.mark.parametrize("content_type", ["application/xml", "text/plain", "", "application/x-www-form-urlencoded"])
def test_non_json_content_type_is_415(client, settings, rq, content_type):
    resp = client.post(f"/push/{TOKEN}", data=json.dumps(LOGIN), headers={"Content-Type": content_type})
    assert_error(resp, 415, "application/json")
    assert queued(settings, rq) == []


def test_json_content_type_with_charset_is_accepted(client):
    assert post(client, LOGIN, content_type="application/json; charset=utf-8").status_code == 202


def test_queue_above_high_water_is_503_with_retry_after(database_url, redis_url, rq):
    settings = make_settings(database_url, redis_url, QUEUE_HIGH_WATER="2")
    client = create_app(settings).test_client()
    assert post(client, LOGIN).status_code == 202
    assert post(client, LOGIN).status_code == 202
    resp = post(client, LOGIN)
    assert_error(resp, 503, "full")
    assert int(resp.headers["Retry-After"]) > 0
    assert len(queued(settings, rq)) == 2


def test_unreachable_redis_spools_to_postgresql_and_answers_202(database_url, db):
    settings = make_settings(database_url, f"redis://127.0.0.1:{free_port()}/0")
    resp = post(create_app(settings).test_client(), LOGIN)
    assert resp.status_code == 202
    [(item,)] = query(db, "SELECT item FROM spool")
    envelope = Envelope.decode(bytes(item))
    assert envelope.receipt_id == resp.get_json()["id"]
    assert json.loads(envelope.body) == LOGIN


def test_neither_redis_nor_postgresql_is_503_with_retry_after():
    settings = make_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/x", f"redis://127.0.0.1:{free_port()}/0")
    resp = post(create_app(settings).test_client(), LOGIN)
    assert_error(resp, 503, "unavailable")
    assert int(resp.headers["Retry-After"]) > 0


def test_healthz(client):
    assert client.get("/healthz").status_code == 200


def test_readyz_when_both_answer(client):
    assert client.get("/readyz").status_code == 200


def test_readyz_names_redis_when_it_is_down(database_url):
    settings = make_settings(database_url, f"redis://127.0.0.1:{free_port()}/0")
    assert_error(create_app(settings).test_client().get("/readyz"), 503, "redis")


def test_readyz_names_postgresql_when_it_is_down(redis_url):
    settings = make_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/x", redis_url)
    assert_error(create_app(settings).test_client().get("/readyz"), 503, "postgresql")


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/nope"), 404, "not found")


def test_with_internal_port_the_figures_are_served_there_and_never_on_the_push_port(settings, db, rq):
    import dataclasses

    from web import create_app

    app = create_app(dataclasses.replace(settings, internal_port=9109))
    client = app.test_client()
    public, internal = "http://localhost:8000", "http://localhost:9109"  # SERVER_PORT: the listener's
    for path in ("/metrics", "/status", "/status.json"):
        assert client.get(path, base_url=public).status_code == 404, path
        assert client.get(path, base_url=internal).status_code == 200, path
    assert client.post(f"/push/{TOKEN}", json=LOGIN, base_url=public).status_code == 202
    # Pushes only on the push port.
    assert client.post(f"/push/{TOKEN}", json=LOGIN, base_url=internal).status_code == 404
    for path in ("/healthz", "/readyz"):
        assert client.get(path, base_url=public).status_code == client.get(path, base_url=internal).status_code == 200
    # Unset, everything is on the one port, as before.
    assert create_app(settings).test_client().get("/metrics").status_code == 200
