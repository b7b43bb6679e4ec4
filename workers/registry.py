"""Handlers keyed by event name.

Adding an event is one decorated function: `@registry.handles("x.y")`. A
handler receives every newly stored event of its names in a batch, with a
cursor inside the batch's transaction, and applies them with set-based SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from marshmallow import Schema

from schemas import EVENT_SCHEMAS
from schemas.events import Event
from schemas.webhooks import WEBHOOK_SCHEMAS


@dataclass(frozen=True)
class StoredEvent:
    id: int  # events.id
    key: str  # events.event_key
    event: Event


Apply = Callable[[Any, list[StoredEvent]], None]


@dataclass(frozen=True)
class Handler:
    apply: Apply = field(compare=False)
    schema: Schema = field(compare=False)
    name: str = ""  # module.function of `apply`; handlers compare and sort by it
    webhook: bool = False  # handles today's webhooks (eventType), not the Push API (name)


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def handles(self, *names: str, schemas: dict[str, Schema] = EVENT_SCHEMAS) -> Callable[[Apply], Apply]:
        """Register a handler of Push API events (by `name`)."""
        return self._register(names, schemas, webhook=False)

    def handles_webhooks(self, *event_types: str, schemas: dict[str, Schema] = WEBHOOK_SCHEMAS
                         ) -> Callable[[Apply], Apply]:
        """Register a handler of webhooks (by `eventType`)."""
        return self._register(event_types, schemas, webhook=True)

    def _register(self, names, schemas: dict[str, Schema], webhook: bool) -> Callable[[Apply], Apply]:
        def register(apply: Apply) -> Apply:
            for name in names:
                if name in self._handlers:
                    raise ValueError(f"a handler for {name!r} is already registered")
                if name not in schemas:
                    raise ValueError(f"no schema describes event {name!r}")
                self._handlers[name] = Handler(apply, schemas[name], f"{apply.__module__}.{apply.__qualname__}",
                                               webhook)
            return apply

        return register

    def get(self, name: str, webhook: bool = False) -> Handler | None:
        """The handler of `name` in that format (a Push API body named like a webhook type is not one)."""
        handler = self._handlers.get(name)
        return handler if handler is not None and handler.webhook == webhook else None

    def names(self) -> Iterable[str]:
        return sorted(self._handlers)


registry = Registry()
