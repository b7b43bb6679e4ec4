"""The OpenAPI 3 document of the HTTP API, built from the marshmallow schemas.

`python -m web.openapi > web/openapi.json` writes the committed copy; a test
checks that copy against a fresh build and against the app's routes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from schemas import EVENT_SCHEMAS
from schemas.fields import Id, PushDateTime

DOCUMENT = Path(__file__).with_name("openapi.json")

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _errors(*codes_and_reasons: tuple[int, str]) -> dict:
    json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(code): {"description": reason, "content": json_error} for code, reason in codes_and_reasons}


def build() -> dict:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Pushline",
        version="1.0.0",
        openapi_version="3.0.3",
        info={"description": "Receives iAdvize push events; answers at once, processes them asynchronously."},
        plugins=[plugin],
    )
    plugin.map_to_openapi_type(Id, "integer", "int64")
    plugin.map_to_openapi_type(PushDateTime, "string", None)
    spec.components.schema("Error", _ERROR)
    refs = []
    for name, schema in sorted(EVENT_SCHEMAS.items()):
        component = "".join(part.capitalize() for part in name.split("."))
        spec.components.schema(component, schema=type(schema))
        refs.append({"$ref": f"#/components/schemas/{component}"})
    # Any JSON object with a string `name` is accepted: unknown names are kept as
    # `unhandled`, and invalid fields are reported by the workers (`rejected`).
    spec.components.schema("Push", {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
        "additionalProperties": True,
        "description": "One iAdvize event. Documented events: " + ", ".join(sorted(EVENT_SCHEMAS)),
        "anyOf": [*refs, {"type": "object"}],
    })
    accepted = {"202": {"description": "Accepted: the event is durably stored",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}}}}}
    failures = _errors(
        (400, "Body not UTF-8 JSON, not an object, no string name, or nested deeper than 32 levels"),
        (401, "Token missing or wrong, or a signed source's signature missing or wrong"),
        (413, "Body over MAX_BODY_BYTES"),
        (415, "Content-Type not JSON"),
        (503, "Neither the queue nor the fallback can take the event, or the queue is full"),
    )
    failures["503"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Push"}}}}
    signature = {"name": "X-iAdvize-Signature", "in": "header", "required": False,
                 "schema": {"type": "string"}, "description": "sha256=<hex HMAC-SHA256 of the raw body>"}
    spec.path("/push/{token}", operations={"post": {
        "summary": "Push one event (the token is in the path)",
        "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}, signature],
        "requestBody": body, "responses": {**accepted, **failures}}})
    spec.path("/push", operations={"post": {
        "summary": "Push one event (Authorization: Bearer <token>)",
        "parameters": [{"name": "Authorization", "in": "header", "required": True, "schema": {"type": "string"}},
                       signature],
        "requestBody": body, "responses": {**accepted, **failures}}})
    ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    spec.path("/healthz", operations={"get": {"summary": "200 while the process lives", "responses": {"200": ok}}})
    down = _errors((503, "Redis or PostgreSQL is down"))
    spec.path("/readyz", operations={"get": {"summary": "200 when Redis and PostgreSQL answer",
                                             "responses": {"200": ok, **down}}})
    spec.path("/metrics", operations={"get": {"summary": "Prometheus text format", "responses": {
        "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}})
    spec.path("/status", operations={"get": {"summary": "Status page (HTML, refreshes itself)", "responses": {
        "200": {"description": "Page", "content": {"text/html": {"schema": {"type": "string"}}}}}}})
    spec.path("/status.json", operations={"get": {"summary": "The status page's figures", "responses": {"200": ok}}})
    spec.path("/openapi.json", operations={"get": {"summary": "This document", "responses": {"200": ok}}})
    return spec.to_dict()


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
