"""The OpenAPI document: in sync with the code, and schemathesis against the real app."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import TOKEN, examples, make_settings
from web import create_app
from web.openapi import DOCUMENT, render


def test_the_committed_document_is_the_generated_one():
    assert DOCUMENT.read_text() == render(), "run: python -m web.openapi > web/openapi.json"


def test_every_route_is_documented_and_every_documented_path_exists(settings):
    app = create_app(settings)
    documented = json.loads(DOCUMENT.read_text())["paths"]
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<token>", "{token}")
        routes[path] = {m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == {path: set(ops) for path, ops in documented.items()}


def test_the_app_serves_the_document(settings):
    resp = create_app(settings).test_client().get("/openapi.json")
    assert resp.status_code == 200 and resp.get_json() == json.loads(DOCUMENT.read_text())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_api_conforms_to_its_document(database_url, redis_url, rq, mode):  # noqa: F811
    """schemathesis data for every operation: never a 5xx, every status and body as documented."""
    app = create_app(make_settings(database_url, redis_url, MAX_BODY_BYTES="4096"))
    api = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /push/{token}", "POST /push", "GET /readyz"}
    if mode == GenerationMode.NEGATIVE:  # only operations with inputs have invalid ones
        operations = [op for op in operations if op.method.upper() == "POST"]
    seen: set[tuple[str, int]] = set()
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @hsettings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case):
            # The token is not what is being fuzzed: always a valid one.
            if case.path_parameters and "token" in case.path_parameters:
                case.path_parameters["token"] = TOKEN
            if case.operation.label == "POST /push":
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
            response = case.call()
            assert response.status_code < 500, (case.operation.label, response.status_code, response.text)
            # 400 for strings PostgreSQL cannot store (\u0000, lone surrogates) or nesting
            # deeper than 32 is documented but not expressible in the JSON schema.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            seen.add((case.operation.label, response.status_code))

        conforms()
    if mode == GenerationMode.POSITIVE:
        assert ("POST /push/{token}", 202) in seen and ("GET /readyz", 200) in seen, seen
    else:
        assert {status for _, status in seen} & {400, 401, 415}, seen
