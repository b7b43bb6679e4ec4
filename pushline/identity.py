"""What makes two pushes the same event.

Webhooks: the same `eventId` (see _webhook_key). Push API: the same `name`, the same `datetime.created` text and equal
`parameters` (as JSON values) are one event, whatever `sent` says. The key is a
digest of a canonical rendering, so equal JSON values give equal keys whatever
their key order, whitespace, escapes or number spelling (1, 1.0 and 1e0 are
one JSON number, as PostgreSQL's jsonb also holds).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from pushline.jsonvalues import canonical_number, integral_float


def _canonical(value: Any) -> Any:
    # Scalars other than floats are returned by the comprehensions without a
    # call: this runs for every event the workers read.
    if type(value) is float:
        return integral_float(value) if value.is_integer() else value
    if type(value) is dict:
        return {k: _canonical(v) if type(v) in _WALK else v for k, v in value.items()}
    if type(value) is list:
        return [_canonical(v) if type(v) in _WALK else v for v in value]
    if type(value) is Decimal:  # a number read exactly (pushline.jsonvalues)
        return canonical_number(value)
    return value


_WALK = frozenset((dict, list, float, Decimal))
# Made once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def event_key(body: dict[str, Any]) -> str:
    event_type = body.get("eventType")
    if isinstance(event_type, str) and not isinstance(body.get("name"), str):
        return _webhook_key(body)
    dt = body.get("datetime")
    created = dt.get("created") if isinstance(dt, dict) else None
    triple = [body.get("name"), _canonical(created), _canonical(body.get("parameters"))]
    text = _ENCODER.encode(triple)
    # 128 bits, as a uuid: a compact, fast unique index; collisions are out of reach.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _webhook_key(body: dict[str, Any]) -> str:
    """CONTRACT 7: webhooks with the same `eventId` are one event (a retry).
    Without a string `eventId` (stored rejected), the content is the identity,
    as for the Push API: every field but `sentAt`."""
    event_id = body.get("eventId")
    if isinstance(event_id, str):
        triple = ["webhook", event_id]
    else:
        triple = ["webhook-content", _canonical({k: v for k, v in body.items() if k != "sentAt"})]
    text = _ENCODER.encode(triple)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
