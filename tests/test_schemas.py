"""The marshmallow schemas: one case per seed event, and each way to be invalid."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from marshmallow import ValidationError

from schemas import EVENT_SCHEMAS, load_event, push_timezone

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(EVENT_SCHEMAS))
def test_each_seed_example_loads(name):
    body = fixture(name)
    event = load_event(EVENT_SCHEMAS[name], body)
    assert event.name == name
    assert event.created == dt.datetime(2014, 1, 1, tzinfo=dt.UTC)
    assert event.sent == dt.datetime(2014, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    assert event.parameters["operator_id"] == 1


def test_naive_datetimes_are_read_in_push_timezone():
    with push_timezone("Europe/Paris"):
        event = load_event(EVENT_SCHEMAS["operator.login"], fixture("operator.login"))
    assert event.created == dt.datetime(2014, 1, 1, tzinfo=ZoneInfo("Europe/Paris"))
    assert event.created.astimezone(dt.UTC) == dt.datetime(2013, 12, 31, 23, tzinfo=dt.UTC)


def test_iso_8601_with_offset_is_accepted():
    body = fixture("operator.login")
    body["datetime"]["created"] = "2014-01-01T10:00:00+02:00"
    event = load_event(EVENT_SCHEMAS["operator.login"], body)
    assert event.created.astimezone(dt.UTC) == dt.datetime(2014, 1, 1, 8, tzinfo=dt.UTC)


def invalid(name: str, mutate) -> str:
    body = copy.deepcopy(fixture(name))
    mutate(body)
    with pytest.raises(ValidationError) as err:
        load_event(EVENT_SCHEMAS[name], body)
    return str(err.value.messages)


def test_seed_start_as_printed_is_invalid_naming_type():
    body = fixture("conversation.start.as-printed")
    with pytest.raises(ValidationError) as err:
        load_event(EVENT_SCHEMAS["conversation.start"], body)
    assert "parameters.type" in str(err.value.messages)


@pytest.mark.parametrize(
    "field, mutate",
    [
        ("parameters.conversation_id", lambda b: b["parameters"].pop("conversation_id")),
        ("parameters.operator_id", lambda b: b["parameters"].update(operator_id="1")),
        ("parameters.website_id", lambda b: b["parameters"].update(website_id=1.5)),
        ("parameters.group_id", lambda b: b["parameters"].update(group_id=True)),
        ("parameters.group_id", lambda b: b["parameters"].update(group_id=2**63)),
        ("parameters.type", lambda b: b["parameters"].update(type="email")),
        ("parameters.custom_data", lambda b: b["parameters"].update(custom_data=[1])),
        ("datetime.created", lambda b: b["datetime"].update(created="yesterday")),
        ("datetime.created", lambda b: b["datetime"].update(created="2014-02-30 00:00:00")),
        ("datetime.created", lambda b: b["datetime"].update(created="2014-01-01T00:00:00")),
        ("datetime.sent", lambda b: b["datetime"].pop("sent")),
        ("datetime", lambda b: b.pop("datetime")),
        ("parameters", lambda b: b.update(parameters=[])),
    ],
)
def test_invalid_start_names_the_field(field, mutate):
    assert f"{field}:" in invalid("conversation.start", mutate)


def test_custom_data_is_optional_and_may_be_null():
    body = fixture("conversation.start")
    body["parameters"]["custom_data"] = None
    assert load_event(EVENT_SCHEMAS["conversation.start"], body).parameters["custom_data"] is None
    del body["parameters"]["custom_data"]
    assert load_event(EVENT_SCHEMAS["conversation.start"], body).parameters["custom_data"] is None


def test_fields_iadvize_adds_make_no_event_invalid():
    body = fixture("conversation.end")
    body["parameters"]["visitor_id"] = "abc"
    body["account"] = {"id": 9}
    event = load_event(EVENT_SCHEMAS["conversation.end"], body)
    assert "visitor_id" not in event.parameters
