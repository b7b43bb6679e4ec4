"""Queue items -> classified events, before any database work.

Every item becomes an Incoming: processed (a known name that loads), rejected
(a known name that does not, with the reason naming the field) or unhandled
(no handler for its name). Nothing raises here: a bad item is data.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from pushline.envelope import Envelope
from pushline.identity import event_key
from schemas import load_event, peek_datetime
from schemas.events import Event
from workers.registry import Handler, Registry


@dataclass
class Incoming:
    receipt_id: str
    source: str
    received_at: dt.datetime
    key: str
    body: Any
    status: str = "processed"
    error: str | None = None
    event: Event | None = None
    handler: Handler | None = field(default=None, repr=False)
    # Times as read in PUSH_TIMEZONE, best effort for events that did not load.
    created_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    raw: str | None = field(default=None, repr=False)  # the body's JSON text, stored as the payload

    def __post_init__(self) -> None:
        source = self.event
        self.created_at = source.created if source else peek_datetime(self._dict(), "created")
        self.sent_at = source.sent if source else peek_datetime(self._dict(), "sent")

    @property
    def name(self) -> str:
        name = self.body.get("name") if isinstance(self.body, dict) else None
        return name if isinstance(name, str) else "?"

    def _dict(self) -> dict:
        return self.body if isinstance(self.body, dict) else {}

    def reject(self, error: str) -> None:
        self.status, self.error, self.event, self.handler = "rejected", error, None, None


def classify(body: Any, registry: Registry) -> tuple[str, str | None, Event | None, Handler | None]:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return "rejected", "name: missing or not a string", None, None
    handler = registry.get(body["name"])
    if handler is None:
        return "unhandled", f"name: no handler for event {body['name']!r}", None, None
    try:
        event = load_event(handler.schema, body)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, list) else [str(exc.messages)]
        return "rejected", "; ".join(map(str, messages)), None, None
    return "processed", None, event, handler


def read_item(raw: bytes, registry: Registry) -> Incoming:
    envelope = Envelope.decode(raw)
    received_at = dt.datetime.fromtimestamp(envelope.received_at, dt.UTC)
    try:
        raw = envelope.body.decode("utf-8")
        body = json.loads(raw)
    except ValueError as exc:  # the web tier checked it; kept anyway if it ever is not
        text = envelope.body.decode("utf-8", "replace")
        return Incoming(envelope.receipt_id, envelope.source, received_at, event_key({"raw": text}),
                        {"raw": text}, "rejected", f"body: not JSON ({exc})")
    status, error, event, handler = classify(body, registry)
    return Incoming(
        envelope.receipt_id, envelope.source, received_at, event_key(body), body, status, error, event, handler,
        raw=raw,
    )
