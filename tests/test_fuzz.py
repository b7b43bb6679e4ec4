"""Random bytes, random JSON and random nesting at the endpoint: never a 5xx,
and a 202 only for a JSON object with a string `name`."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import TOKEN, examples
from web import create_app

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def nested(depth: int, leaf: str = "1") -> bytes:
    return ('{"name": "n", "v": ' + "[" * depth + leaf + "]" * depth + "}").encode()


@pytest.fixture(scope="module")
def client(settings):
    return create_app(settings).test_client()


def is_acceptable(body: bytes) -> bool:
    """An independent reading of CONTRACT 3: UTF-8 JSON object, string name."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("name"), str)


def storable(value) -> bool:
    """No string (key or value) holds what jsonb refuses: NUL or a lone surrogate."""
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    return True


def post(client, body: bytes):
    resp = client.post(f"/push/{TOKEN}", data=body, content_type="application/json")
    assert resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.is_json and ("id" in resp.get_json() or "error" in resp.get_json())
    if resp.status_code == 202:
        assert is_acceptable(body), body
    return resp


@hsettings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_random_bytes(client, rq, body):
    post(client, body)


@hsettings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON, name=st.one_of(st.none(), st.text(), st.integers()))
def test_random_json(client, rq, value, name):
    if isinstance(value, dict) and name is not None:
        value["name"] = name
    resp = post(client, json.dumps(value).encode())
    if isinstance(value, dict) and isinstance(value.get("name"), str) and storable(value):
        assert resp.status_code == 202


@hsettings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(0, 20_000))
def test_random_nesting(client, rq, depth):
    resp = post(client, nested(depth))
    assert resp.status_code == (202 if depth + 1 <= 32 else 400)
