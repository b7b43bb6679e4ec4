"""Queue items -> classified events, before any database work.

Every item becomes an Incoming: processed (a known name that loads), rejected
(a known name that does not, with the reason naming the field) or unhandled
(no handler for its name). Nothing raises here: a bad item is data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from pushline.envelope import Envelope
from pushline.identity import event_key
from pushline.jsonvalues import dumps_exact, loads
from schemas import load_event, peek_datetime
from schemas.events import Event
from schemas.webhooks import is_webhook, load_webhook, peek_webhook_time
from workers.registry import Handler, Registry

log = logging.getLogger(__name__)


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
        webhook = is_webhook(self.body)
        if self.created_at is None:
            self.created_at = source.created if source else (
                peek_webhook_time(self.body, "createdAt") if webhook else peek_datetime(self._dict(), "created"))
        if self.sent_at is None:
            self.sent_at = source.sent if source else (
                peek_webhook_time(self.body, "sentAt") if webhook else peek_datetime(self._dict(), "sent"))

    @property
    def webhook_id(self) -> bool:
        """A webhook identified by its eventId (pushline.identity)."""
        return is_webhook(self.body) and isinstance(self.body.get("eventId"), str)

    @property
    def name(self) -> str:
        """`name` (Push API) or `eventType` (webhooks): events.name."""
        if not isinstance(self.body, dict):
            return "?"
        name = self.body.get("eventType") if is_webhook(self.body) else self.body.get("name")
        return name if isinstance(name, str) else "?"

    def _dict(self) -> dict:
        return self.body if isinstance(self.body, dict) else {}

    def reject(self, error: str) -> None:
        self.status, self.error, self.event, self.handler = "rejected", error, None, None

    def as_unstorable(self, error: str) -> Incoming:
        """The same receipt as a minimal rejected row PostgreSQL can always take:
        the name cut to 200 characters (an index row has a size limit), the body
        kept as one JSON string with NUL and lone surrogates replaced, no dates."""
        text = self.raw if self.raw is not None else dumps_exact(self.body)
        text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        body = {"name": self.name[:200], "unstorable_body": text}
        # Undated: the dates themselves may be what PostgreSQL refused.
        return Incoming(self.receipt_id, self.source, self.received_at, self.key, body, "rejected", error[:2000])


def classify(body: Any, registry: Registry) -> tuple[str, str | None, Event | None, Handler | None]:
    webhook = is_webhook(body)
    if webhook:
        if not isinstance(body.get("eventId"), str):
            # Its identity is then its content (pushline.identity); it cannot be told from a retry.
            return "rejected", "eventId: missing or not a string", None, None
        name, field, load = body["eventType"], "eventType", load_webhook
    elif isinstance(body, dict) and isinstance(body.get("name"), str):
        name, field, load = body["name"], "name", load_event
    else:
        return "rejected", "name: missing or not a string (nor eventType)", None, None
    handler = registry.get(name, webhook=webhook)
    if handler is None:
        return "unhandled", f"{field}: no handler for event {name!r}", None, None
    try:
        event = load(handler.schema, body)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, list) else [str(exc.messages)]
        return "rejected", "; ".join(map(str, messages)), None, None
    except Exception as exc:  # a schema that chokes on some input must not stop the queue
        log.error("schema failed on an event", exc_info=True)
        return "rejected", f"schema: {type(exc).__name__}: {_first_line(exc)}", None, None
    return "processed", None, event, handler


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:500]


def parse_json(text: str):
    """The body as the edge read it: numbers beyond a float read exactly."""
    return loads(text)


def read_item(raw: bytes, registry: Registry) -> Incoming:
    """Raises only when the item is not even an envelope (the caller dead-letters it)."""
    envelope = Envelope.decode(raw)
    received_at = dt.datetime.fromtimestamp(envelope.received_at, dt.UTC)
    try:
        text = envelope.body.decode("utf-8")
        body = parse_json(text)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        status, error, event, handler = classify(body, registry)
        return Incoming(envelope.receipt_id, envelope.source, received_at, event_key(body), body, status, error,
                        event, handler, raw=text)
    except Exception as exc:  # the web tier checked it; kept, rejected, if it ever is not
        text = envelope.body.decode("utf-8", "replace")
        return Incoming(envelope.receipt_id, envelope.source, received_at, event_key({"raw": text}),
                        {"raw": text}, "rejected", f"body: unreadable ({type(exc).__name__}: {_first_line(exc)})")
