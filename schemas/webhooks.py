"""Today's iAdvize webhooks: flat camelCase bodies told apart by `eventType`.

Errors name the fields as iAdvize spells them (`conversationId`,
`operatorIds`...). A loaded webhook is an `Event` like a Push API one: its
name is the `eventType`, its times `createdAt` and `sentAt`, and its
`parameters` the loaded fields under snake_case names (`event_id`,
`conversation_id`, `operator_ids`, `availabilities` as a list of
`{"channel", "status"}`...). Fields iAdvize may add are ignored here and kept
in the stored payload. Channels and statuses are open strings: iAdvize
serves channels it has not documented.

Strings that key rows (ids, channels, statuses) are bounded in UTF-8 bytes,
not characters: they go into btree index entries, which PostgreSQL caps at
about 2.7 kB, and a string of 1000 four-byte characters that passed here then
failed in the handler, with an error naming no field. KEY_BYTES leaves room
for an eventId and a channel in one entry (availability tables key on both).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validate

from schemas.events import OUT_OF_RANGE, Event, flatten_messages, in_utc_range
from schemas.fields import Id, InlineNested, localize_naive

_BIGINT = 2**63

HANDLED = ("v2.conversation.pushed", "v2.conversation.closed", "user.connected", "user.disconnected",
           "user.availability.updated", "satisfaction.answered")


def is_webhook(body: Any) -> bool:
    """A body is a webhook when it has a string `eventType` and no string `name`
    (the Push API's envelope); the edge and the workers tell them apart alike."""
    return isinstance(body, dict) and isinstance(body.get("eventType"), str) and not isinstance(body.get("name"), str)


def parse_iso(value: object) -> dt.datetime:
    """ISO 8601: with `Z` or an offset as given; without one, in PUSH_TIMEZONE."""
    if not isinstance(value, str):
        raise ValidationError("Not a datetime string.")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("Not an ISO 8601 datetime.") from None
    return parsed if parsed.tzinfo is not None else localize_naive(parsed)


class IsoDateTime(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        return parse_iso(value)


KEY_BYTES = 1000


class Utf8Length(validate.Validator):
    """At least `min_chars` characters and at most `max_bytes` bytes in UTF-8."""

    def __init__(self, min_chars: int = 0, max_bytes: int = KEY_BYTES) -> None:
        self.min_chars, self.max_bytes = min_chars, max_bytes

    def __call__(self, value: str) -> str:
        if len(value) < self.min_chars:
            raise ValidationError("Must not be empty." if self.min_chars == 1
                                  else f"Shorter than {self.min_chars} characters.")
        # A character is at most 4 bytes: most values need no encoding. Lone
        # surrogates (JSON allows "\ud800") count as 3, as UTF-8 would spell them.
        if len(value) * 4 > self.max_bytes and len(value.encode("utf-8", "surrogatepass")) > self.max_bytes:
            raise ValidationError(f"Longer than {self.max_bytes} bytes in UTF-8.")
        return value


class Text(fields.String):
    """A string that keys rows: non-empty unless `empty`, at most KEY_BYTES bytes in UTF-8."""

    def __init__(self, empty: bool = False, **kwargs):
        super().__init__(validate=Utf8Length(min_chars=0 if empty else 1), **kwargs)


def _not_null(kind: str) -> dict[str, str]:
    """A field that may be left out but, when present, must hold a value: null is no answer."""
    return {"null": f"Must be {kind}, not null (an event without this answer leaves the field out)."}


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE

    event_id = Text(data_key="eventId", required=True)
    event_type = fields.String(data_key="eventType", required=True)
    created_at = IsoDateTime(data_key="createdAt", required=True)
    sent_at = IsoDateTime(data_key="sentAt", required=True)


class _Conversation(_Base):
    conversation_id = Text(data_key="conversationId", required=True)
    client_id = Id(data_key="clientId", required=True)
    project_id = Id(data_key="projectId", required=True)
    channel = Text(data_key="channel", required=True, empty=True)  # any channel string is valid
    visitor_id = Text(data_key="visitorId", load_default=None, allow_none=True, empty=True)


class ConversationPushed(_Conversation):
    operator_id = Id(data_key="operatorId", required=True)


class ConversationClosed(_Conversation):
    operator_ids = fields.List(Id(), data_key="operatorIds", required=True)


class UserConnection(_Base):
    user_id = Id(data_key="userId", required=True)


class Availability(Schema):
    class Meta:
        unknown = EXCLUDE

    channel = Text(required=True, empty=True)
    status = Text(required=True)


class AvailabilityUpdated(_Base):
    user_id = Id(data_key="userId", required=True)
    availabilities = fields.List(InlineNested(Availability), required=True)


class SatisfactionAnswered(_Base):
    conversation_id = Text(data_key="conversationId", required=True)
    project_id = Id(data_key="projectId", load_default=None, allow_none=True)
    customer_satisfaction = Id(data_key="customerSatisfaction", load_default=None, allow_none=False,
                               error_messages=_not_null("an integer"))
    net_promoter_score = Id(data_key="netPromoterScore", load_default=None, allow_none=False,
                            validate=validate.Range(0, 10), error_messages=_not_null("an integer"))
    satisfaction_comment = fields.String(data_key="satisfactionComment", load_default=None, allow_none=False,
                                         error_messages=_not_null("a string"))
    custom_question = fields.Boolean(data_key="customQuestion", load_default=None, allow_none=True)


WEBHOOK_SCHEMAS: dict[str, Schema] = {
    "v2.conversation.pushed": ConversationPushed(),
    "v2.conversation.closed": ConversationClosed(),
    "user.connected": UserConnection(),
    "user.disconnected": UserConnection(),
    "user.availability.updated": AvailabilityUpdated(),
    "satisfaction.answered": SatisfactionAnswered(),
}


class _Slow(Exception):
    """The fast loader cannot say: marshmallow decides (and words the error)."""


def _fast_field(field: fields.Field) -> Callable[[Any], Any] | None:
    """A loader of one present value, as field.deserialize returns it for the
    values it accepts as they are; anything else raises _Slow. None: a field
    this does not know, whose schema then always goes through marshmallow."""
    if field.pre_load or field.post_load:
        return None
    validators = tuple(field.validators)
    allow_none = field.allow_none

    def checked(load: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(value):
            if value is None:
                if allow_none:
                    return None
                raise _Slow
            out = load(value)
            for validator in validators:
                validator(out)  # a ValidationError: the slow path words it
            return out
        return run

    kind = type(field)
    if kind is IsoDateTime:
        return checked(parse_iso)
    if kind is Id:
        def load_id(value):
            if type(value) is not int or not -_BIGINT <= value < _BIGINT:
                raise _Slow
            return value
        return checked(load_id)
    if kind in (fields.String, Text):
        def load_str(value):
            if type(value) is not str:
                raise _Slow
            return value
        return checked(load_str)
    if kind is fields.Boolean:
        def load_bool(value):
            if type(value) is not bool:
                raise _Slow
            return value
        return checked(load_bool)
    if kind is fields.List:
        inner = _fast_field(field.inner)
        if inner is None:
            return None

        def load_list(value):
            if type(value) is not list:
                raise _Slow
            return [inner(v) for v in value]
        return checked(load_list)
    if kind is InlineNested:
        nested = _fast_schema(field.schema)
        if nested is None:
            return None

        def load_nested(value):
            if type(value) is not dict:
                raise _Slow
            return nested(value)
        return checked(load_nested)
    return None


def _fast_schema(schema: Schema) -> Callable[[dict], dict] | None:
    """What schema.load returns for a body every field of which loads as it is;
    _Slow for any other body. None for a schema with hooks or fields it does not
    know. marshmallow's machinery (an error store, a closure and three calls per
    field) cost about two thirds of a webhook's validation."""
    if any(schema._hooks.values()) or schema.unknown != EXCLUDE or schema.many:
        return None
    plan = []
    for name, field in schema.load_fields.items():
        load = _fast_field(field)
        if load is None or (field.attribute or name).count("."):
            return None
        default = field.load_default
        if callable(default):
            return None
        plan.append((field.data_key or name, field.attribute or name, load, field.required, default))

    def load_body(body: dict) -> dict:
        out = {}
        for key, attribute, load, required, default in plan:
            value = body.get(key, missing)
            if value is missing:
                if required:
                    raise _Slow
                if default is not missing:
                    out[attribute] = default
            else:
                out[attribute] = load(value)
        return out
    return load_body


def _load(schema: Schema, body: dict[str, Any]) -> dict:
    try:
        fast = schema._pushline_fast
    except AttributeError:
        fast = schema._pushline_fast = _fast_schema(schema)
    if fast is not None:
        try:
            return fast(body)
        except Exception:  # _Slow, a validator's error, whatever a parse raised: marshmallow says
            pass
    return schema.load(body)


def load_webhook(schema: Schema, body: dict[str, Any]) -> Event:
    """Typed event, or ValidationError whose message names each bad field as iAdvize spells it."""
    try:
        data = _load(schema, body)
    except ValidationError as exc:
        raise ValidationError("; ".join(sorted(flatten_messages(exc.messages)))) from None
    created, sent = data.pop("created_at"), data.pop("sent_at")
    bad = [f"{name}: {OUT_OF_RANGE}" for name, value in (("createdAt", created), ("sentAt", sent))
           if not in_utc_range(value)]
    if bad:
        raise ValidationError("; ".join(bad))
    return Event(data.pop("event_type"), created, sent, data)


def peek_webhook_time(body: dict[str, Any], which: str) -> dt.datetime | None:
    """Best-effort `createdAt`/`sentAt` of a webhook that did not load."""
    try:
        value = parse_iso(body.get(which))
    except (ValidationError, ValueError, OverflowError):
        return None
    return value if in_utc_range(value) else None
