"""Field types shared by the event schemas."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from zoneinfo import ZoneInfo

from marshmallow import EXCLUDE, ValidationError, fields, missing

_PUSH_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_BIGINT = 2**63

_timezone: contextvars.ContextVar[dt.tzinfo] = contextvars.ContextVar("push_timezone", default=dt.UTC)


_max_custom_data_keys: contextvars.ContextVar[int] = contextvars.ContextVar("max_custom_data_keys", default=100)


@contextlib.contextmanager
def push_timezone(tz: dt.tzinfo | str, max_custom_data_keys: int | None = None) -> Iterator[None]:
    """Settings the schemas read while loading: the zone in which naive
    `YYYY-MM-DD HH:MM:SS` datetimes are read, and the custom_data key limit."""
    token = _timezone.set(ZoneInfo(tz) if isinstance(tz, str) else tz)
    limit = _max_custom_data_keys.set(max_custom_data_keys) if max_custom_data_keys else None
    try:
        yield
    finally:
        _timezone.reset(token)
        if limit is not None:
            _max_custom_data_keys.reset(limit)


def limit_keys(value: dict) -> None:
    limit = _max_custom_data_keys.get()
    if value is not None and len(value) > limit:
        raise ValidationError(f"More than {limit} keys ({len(value)}).")


# Zones without transitions, where a local time has exactly one reading: the
# default and by far the most common PUSH_TIMEZONE, so parsing skips the fold checks.
_UTC_ZONES = (dt.UTC, ZoneInfo("UTC"), ZoneInfo("Etc/UTC"))


def _earlier_offset_wins(first: dt.datetime, second: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """`first` (fold=0) unless the local time has two readings; then the one
    with the smaller UTC offset, with that offset fixed in its tzinfo."""
    offset, other = tz.utcoffset(first), tz.utcoffset(second)
    if offset == other:
        return first
    # A fixed offset, not `tz` with fold=1: datetimes sharing a tzinfo compare
    # and subtract by wall clock, ignoring fold, so min()/sorted() over events
    # would put the autumn's second 02:30 before its first 02:50.
    return first.replace(tzinfo=dt.timezone(min(offset, other)))


def localize(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The instant a naive local time denotes in `tz`, by PostgreSQL's rule.

    At a transition, a local time has two readings (fold=0 and fold=1); take
    the one with the SMALLER UTC offset, as `timestamp AT TIME ZONE` does, so
    that Python and the database always agree: an ambiguous autumn time is its
    second occurrence (standard time), a nonexistent spring time is read with
    the offset in force before the change (Europe/Paris: 2025-10-26 02:30 and
    2025-03-30 02:30 are both 01:30 UTC). Python's default (fold=0) would make
    the first of these 00:30 UTC.
    """
    if tz in _UTC_ZONES:
        return naive.replace(tzinfo=tz)
    first = naive.replace(tzinfo=tz, fold=0)
    return _earlier_offset_wins(first, first.replace(fold=1), tz)


def localize_naive(naive: dt.datetime) -> dt.datetime:
    """A naive time in PUSH_TIMEZONE (the zone the loading context set)."""
    return localize(naive, _timezone.get())


def parse_push_datetime(value: object) -> dt.datetime:
    """iAdvize's `YYYY-MM-DD HH:MM:SS` (in PUSH_TIMEZONE, see localize), or ISO 8601 with an offset."""
    if not isinstance(value, str):
        raise ValidationError("Not a datetime string.")
    if _PUSH_FORMAT.match(value):
        # Sliced by hand: strptime costs more than the rest of the event's validation.
        # localize() inlined: datetime.replace costs more than building the datetime.
        tz = _timezone.get()
        parts = (int(value[0:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]), int(value[14:16]),
                 int(value[17:19]))
        try:
            first = dt.datetime(*parts, tzinfo=tz)
        except ValueError as exc:
            raise ValidationError(f"Not a valid datetime: {exc}.") from None
        if tz in _UTC_ZONES:
            return first
        return _earlier_offset_wins(first, dt.datetime(*parts, tzinfo=tz, fold=1), tz)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("Not a datetime: expected 'YYYY-MM-DD HH:MM:SS' or ISO 8601 with an offset.") from None
    if parsed.tzinfo is None:
        raise ValidationError("ISO 8601 datetimes need an offset (e.g. +02:00 or Z).")
    return parsed


class NoValidatorsFast:
    """A field that skips validation when it has no validators.

    marshmallow's Field._validate builds an And() of the field's validators
    for every value it loads (`_validate_all` is a property), even when there
    are none: about a tenth of an event's validation for most of our fields.
    With validators, marshmallow's own path runs (its error aggregation)."""

    def _validate(self, value) -> None:
        if self.validators:
            super()._validate(value)


class String(NoValidatorsFast, fields.String):
    pass


class Dict(NoValidatorsFast, fields.Dict):
    pass


class PushDateTime(NoValidatorsFast, fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return parse_push_datetime(value)
        except ValueError as exc:  # strptime range errors, e.g. month 13
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError(f"Not a valid datetime: {exc}.") from None


class Id(NoValidatorsFast, fields.Field):
    """A platform id: a JSON integer that fits PostgreSQL's bigint."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Must be an integer.")
        if not -_BIGINT <= value < _BIGINT:
            raise ValidationError("Integer out of range (64-bit).")
        return value


class InlineNested(NoValidatorsFast, fields.Nested):
    """A Nested whose schema's fields are run here, without a Schema.load per value.

    Every event has two nested objects, and a nested load's own machinery
    (error store, hook lookups, partial checks) cost about a quarter of the
    event's validation. This does what Schema.load does for a schema without
    hooks or schema validators, the only kind it accepts: each field's
    deserialize (required, defaults, None, validators), its errors keyed by
    field, unknown keys ignored. Errors and the OpenAPI document are those of
    Nested.
    """

    def _bind_to_schema(self, field_name, parent):
        super()._bind_to_schema(field_name, parent)
        schema = self.schema
        if any(schema._hooks.values()) or schema.many or schema.unknown != EXCLUDE:
            raise TypeError(f"{type(schema).__name__}: InlineNested needs a schema without hooks, excluding unknowns")
        self._fields = [(field.data_key or name, field.attribute or name, field)
                        for name, field in schema.load_fields.items()]

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        if not isinstance(value, Mapping):
            raise ValidationError({"_schema": [self.schema.error_messages["type"]]})
        out, errors = {}, {}
        for key, attribute, field in self._fields:
            try:
                loaded = field.deserialize(value.get(key, missing), key, value)
            except ValidationError as exc:
                errors[key] = exc.messages
                continue
            if loaded is not missing:
                out[attribute] = loaded
        if errors:
            raise ValidationError(errors, valid_data=out)
        return out
