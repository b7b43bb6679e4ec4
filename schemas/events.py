"""The four documented events, and how a body becomes a typed event.

Fields that iAdvize may add later are ignored here (EXCLUDE) and kept in the
stored payload, so no new field ever makes an event invalid.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, validate

from schemas.fields import Dict, Id, InlineNested, PushDateTime, String, limit_keys, parse_push_datetime

CONVERSATION_TYPES = ("chat", "call", "video")


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE


class DatetimeSchema(_Base):
    created = PushDateTime(required=True)
    sent = PushDateTime(required=True)


class OperatorParameters(_Base):
    operator_id = Id(required=True)


class ConversationEndParameters(_Base):
    conversation_id = Id(required=True)
    type = String(required=True, validate=validate.OneOf(CONVERSATION_TYPES))
    operator_id = Id(required=True)
    website_id = Id(required=True)
    group_id = Id(required=True)


class ConversationStartParameters(ConversationEndParameters):
    custom_data = Dict(load_default=None, allow_none=True, validate=limit_keys)


def _event_schema(parameters: type[Schema]) -> Schema:
    cls = type(
        f"{parameters.__name__.removesuffix('Parameters')}Event",
        (_Base,),
        {
            "name": String(required=True),
            "datetime": InlineNested(DatetimeSchema, required=True),
            "parameters": InlineNested(parameters, required=True),
        },
    )
    return cls()


EVENT_SCHEMAS: dict[str, Schema] = {
    "operator.login": _event_schema(OperatorParameters),
    "operator.logout": _event_schema(OperatorParameters),
    "conversation.start": _event_schema(ConversationStartParameters),
    "conversation.end": _event_schema(ConversationEndParameters),
}


@dataclass(frozen=True)
class Event:
    name: str
    created: dt.datetime
    sent: dt.datetime
    parameters: dict[str, Any]


def flatten_messages(messages: Any, path: str = "") -> list[str]:
    """marshmallow's nested messages as `field.path: message` lines."""
    if isinstance(messages, dict):
        out = []
        for key, value in messages.items():
            if key == "_schema":  # marshmallow's name for "the object itself"
                out += flatten_messages(value, path or "body")
            else:
                out += flatten_messages(value, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{path}: {' '.join(messages)}"]
    return [f"{path}: {messages}"]


OUT_OF_RANGE = ("Out of range: the instant must fall in years 1 to 9999 in UTC, with an offset"
                " of whole seconds within ±15:59.")
_MAX_OFFSET = dt.timedelta(hours=15, minutes=59, seconds=59)  # PostgreSQL's limit


def in_utc_range(value: dt.datetime) -> bool:
    """Whether both Python and PostgreSQL can hold this instant.

    `0001-01-01T00:00:00+14:00` is a valid local time in year 1 but the last
    day of 1 BC in UTC: PostgreSQL stores it, Python cannot read it back.
    Python also reads offsets PostgreSQL refuses (`+20:00`, `+05:45:30.5`).
    """
    offset = value.utcoffset()
    if offset is not None and (abs(offset) > _MAX_OFFSET or offset.microseconds):
        return False
    try:
        value.astimezone(dt.UTC)
    except OverflowError:
        return False
    return True


def load_event(schema: Schema, body: dict[str, Any]) -> Event:
    """Typed event, or ValidationError whose message names each bad field."""
    try:
        data = schema.load(body)
    except ValidationError as exc:
        raise ValidationError("; ".join(sorted(flatten_messages(exc.messages)))) from None
    created, sent = data["datetime"]["created"], data["datetime"]["sent"]
    bad = [f"datetime.{name}: {OUT_OF_RANGE}" for name, value in (("created", created), ("sent", sent))
           if not in_utc_range(value)]
    if bad:
        raise ValidationError("; ".join(bad))
    return Event(data["name"], created, sent, data["parameters"])


def peek_datetime(body: dict[str, Any], which: str) -> dt.datetime | None:
    """Best-effort time of an event that is not (or cannot be) loaded; None
    when there is none usable (the row then lives in events_undated)."""
    stamp = body.get("datetime")
    try:
        value = parse_push_datetime(stamp.get(which)) if isinstance(stamp, dict) else None
    except (ValidationError, ValueError, OverflowError):
        return None
    return value if value is not None and in_utc_range(value) else None
