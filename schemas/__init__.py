"""marshmallow schemas for the iAdvize push envelope and its events."""

from schemas.events import EVENT_SCHEMAS, load_event, peek_datetime
from schemas.fields import push_timezone

__all__ = ["EVENT_SCHEMAS", "load_event", "peek_datetime", "push_timezone"]
