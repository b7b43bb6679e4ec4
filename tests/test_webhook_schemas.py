"""The webhooks' fast loader (schemas/webhooks.py) says exactly what marshmallow says.

Valid bodies are loaded without marshmallow's machinery; any body the fast loader
cannot take as it is goes to the schema's own load, which words the errors. Here
every schema gets bodies whose fields are drawn from values of every kind (valid,
null, missing, of another type, out of range, too long, lone surrogates, naive
and malformed times...), and load_webhook must give the same Event, or the same
error, as a plain schema.load would.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from marshmallow import ValidationError

from schemas import push_timezone
from schemas.events import OUT_OF_RANGE, Event, flatten_messages, in_utc_range
from schemas.webhooks import WEBHOOK_SCHEMAS, load_webhook
from tests.conftest import examples

HYPOTHESIS = {"deadline": None, "derandomize": True, "database": None,
              "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def reference(schema, body) -> Event:
    """load_webhook as it was before the fast loader: schema.load for every body."""
    try:
        data = schema.load(body)
    except ValidationError as exc:
        raise ValidationError("; ".join(sorted(flatten_messages(exc.messages)))) from None
    created, sent = data.pop("created_at"), data.pop("sent_at")
    bad = [f"{name}: {OUT_OF_RANGE}" for name, value in (("createdAt", created), ("sentAt", sent))
           if not in_utc_range(value)]
    if bad:
        raise ValidationError("; ".join(bad))
    return Event(data.pop("event_type"), created, sent, data)


def outcome(load, schema, body):
    try:
        return "ok", load(schema, body)
    except ValidationError as exc:
        return "invalid", exc.messages
    except Exception as exc:  # whatever the schema raises, both must raise it
        return "error", type(exc).__name__, str(exc)


MISSING = object()
ints = st.one_of(st.integers(-3, 12), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63, -(2**63) - 1]))
texts = st.one_of(st.sampled_from(["", "CHAT", "AVAILABLE", "\ud800", "é" * 250, "é" * 501, "x" * 1001]),
                  st.text(max_size=12))
times = st.one_of(st.sampled_from(["2024-03-05T09:00:00.123Z", "2024-03-05T10:00:00+01:00", "2024-03-05T09:00:00",
                                   "2024-03-05 09:00:00", "2024-02-30T10:00:00Z", "yesterday", "0001-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59-14:00", "2025-10-26T02:30:00"]),
                  st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
                  .map(lambda t: t.isoformat()))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts, times)
anything = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(texts, scalars, max_size=2))


def availabilities():
    entry = st.fixed_dictionaries({}, optional={"channel": st.one_of(texts, anything), "status": st.one_of(texts,
                                                                                                          anything),
                                                "extra": anything})
    return st.one_of(st.lists(entry, max_size=3), anything)


# Per iAdvize field: values of its own kind, mostly, and now and then anything else.
FIELDS = {
    "eventId": texts, "createdAt": times, "sentAt": times, "conversationId": texts, "clientId": ints,
    "projectId": ints, "channel": texts, "visitorId": texts, "operatorId": ints,
    "operatorIds": st.one_of(st.lists(ints, max_size=3), st.lists(anything, max_size=2)), "userId": ints,
    "availabilities": availabilities(), "customerSatisfaction": ints, "netPromoterScore": ints,
    "satisfactionComment": texts, "customQuestion": st.one_of(st.booleans(), st.none(), scalars),
}


@st.composite
def bodies(draw):
    event_type = draw(st.sampled_from(sorted(WEBHOOK_SCHEMAS)))
    body = {"eventType": event_type, "platform": "ha", "unknownField": draw(anything)}
    for name, values in FIELDS.items():
        value = draw(st.one_of(st.just(MISSING), values, anything) if draw(st.integers(0, 5)) == 0
                     else st.one_of(st.just(MISSING), values) if draw(st.booleans()) else values)
        if value is not MISSING:
            body[name] = value
    return event_type, body


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris"])
@hsettings(max_examples=examples(600), **HYPOTHESIS)
@given(drawn=bodies())
def test_the_fast_loader_says_what_marshmallow_says(tz, drawn):
    event_type, body = drawn
    schema = WEBHOOK_SCHEMAS[event_type]
    with push_timezone(tz):
        assert outcome(load_webhook, schema, body) == outcome(reference, schema, body)


def test_valid_bodies_take_the_fast_path(monkeypatch):
    """The bodies iAdvize sends do not reach schema.load (else the fast loader saves nothing)."""
    import json

    from bench.webhooks import webhook_bodies

    by_type: dict[str, list[dict]] = {}
    for body in map(json.loads, webhook_bodies(5000)):
        by_type.setdefault(body["eventType"], []).append(body)
    # A desk's first disconnections come hours into its day: the connections' bodies, disconnecting.
    by_type["user.disconnected"] = [{**b, "eventType": "user.disconnected"} for b in by_type["user.connected"]]
    assert set(by_type) == set(WEBHOOK_SCHEMAS)
    samples = [body for some in by_type.values() for body in some[:100]]
    expected = [reference(WEBHOOK_SCHEMAS[b["eventType"]], b) for b in samples]
    for schema in WEBHOOK_SCHEMAS.values():
        monkeypatch.setattr(schema, "load", lambda *a, **k: pytest.fail("schema.load called"))
    assert [load_webhook(WEBHOOK_SCHEMAS[b["eventType"]], b) for b in samples] == expected
