"""What makes two pushes the same event.

CONTRACT: the same `name`, the same `datetime.created` text and equal
`parameters` (as JSON values) are one event, whatever `sent` says. The key is a
digest of a canonical rendering, so equal JSON values give equal keys whatever
their key order, whitespace, escapes or number spelling (1, 1.0 and 1e0 are
one JSON number, as PostgreSQL's jsonb also holds).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def event_key(body: dict[str, Any]) -> str:
    dt = body.get("datetime")
    created = dt.get("created") if isinstance(dt, dict) else None
    triple = [body.get("name"), _canonical(created), _canonical(body.get("parameters"))]
    text = json.dumps(triple, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # 128 bits, as a uuid: a compact, fast unique index; collisions are out of reach.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
