"""The checks a push passes before it is queued: pure functions over bytes.

Field-level validation is the workers' job; here we only make sure that what
we queue is one storable JSON object with a string `name` (the Push API) or a
string `eventType` (today's webhooks).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from pushline.jsonvalues import NotJSON, loads_exact, needs_exact, storable

MAX_DEPTH = 32


class BadBody(ValueError):
    """The body cannot be accepted; the message says why (400)."""


def _no_constants(token: str) -> Any:
    # json accepts NaN/Infinity, which are not JSON and which jsonb refuses.
    raise BadBody(f"body is not valid JSON: {token} is not a JSON value")


# Made once: json.loads with options builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _check_tree(root: Any, check_strings: bool) -> None:
    """Depth limit, strings jsonb can store (when the body has \\u escapes),
    and numbers numeric can store (exact numbers are Decimals)."""
    stack = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise BadBody(f"body is nested deeper than {MAX_DEPTH} levels")
            for key, item in value.items():
                if check_strings:
                    _check_string(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                raise BadBody(f"body is nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in value)
        elif check_strings and isinstance(value, str):
            _check_string(value)
        elif type(value) is Decimal and not storable(value):
            raise BadBody("body holds a number beyond the range PostgreSQL can store")


def _check_string(text: str) -> None:
    if "\x00" in text:
        raise BadBody("body contains \\u0000, which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadBody("body contains an unpaired UTF-16 surrogate escape") from None


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object with a string `name` or `eventType`, or BadBody."""
    if not body:
        raise BadBody("body is empty: expected one JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody("body is not UTF-8") from None
    exact = needs_exact(body)
    try:
        # Duplicate keys: the last one wins, as in most JSON parsers.
        obj = loads_exact(text) if exact else _DECODER.decode(text)
    except RecursionError:
        raise BadBody(f"body is nested deeper than {MAX_DEPTH} levels") from None
    except NotJSON as exc:
        raise BadBody(f"body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadBody(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise BadBody("body must be a JSON object")
    escapes = b"\\u" in body
    # Nesting deeper than MAX_DEPTH needs more than MAX_DEPTH brackets: most
    # bodies are proven shallow by two C-speed counts, without a walk.
    if exact or escapes or body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        _check_tree(obj, check_strings=escapes)
    if not isinstance(obj.get("name"), str) and not isinstance(obj.get("eventType"), str):
        raise BadBody("body has neither a string 'name' (Push API) nor a string 'eventType' (webhook)")
    return obj


def is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    mimetype = value.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))
