"""InlineNested must be indistinguishable from marshmallow's Nested: same data, same errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, pre_load

from schemas import EVENT_SCHEMAS
from schemas.events import _Base
from schemas.events import flatten_messages as _flatten
from schemas.fields import InlineNested
from tests.conftest import examples

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=False),
    st.sampled_from(["chat", "call", "video", "fax", "", "2014-01-01 00:00:00", "2014-02-30 00:00:00",
                     "2014-01-01T00:00:00+02:00", "2014-01-01T00:00:00"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=120),
)
KEYS = ["created", "sent", "conversation_id", "type", "operator_id", "website_id", "group_id", "custom_data", "other"]
OBJECTS = st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES))


def with_plain_nested(schema: Schema) -> Schema:
    """The same event schema, its InlineNested fields replaced by marshmallow's Nested."""
    declared = {name: fields.Nested(type(field.schema), required=field.required)
                if isinstance(field, InlineNested) else field for name, field in schema.declared_fields.items()}
    return type("Plain" + type(schema).__name__, (_Base,), declared)()


def outcome(schema: Schema, body: dict):
    try:
        return "loaded", schema.load(body)
    except ValidationError as exc:
        return "rejected", sorted(_flatten(exc.messages))


@pytest.mark.parametrize("name", sorted(EVENT_SCHEMAS))
@hsettings(max_examples=examples(150), deadline=None)
@given(datetime=OBJECTS, parameters=OBJECTS, drop=st.sets(st.sampled_from(["datetime", "parameters"])))
def test_same_data_and_same_errors_as_nested(name, datetime, parameters, drop):
    inline = EVENT_SCHEMAS[name]
    assert any(isinstance(f, InlineNested) for f in inline.declared_fields.values())
    body = {"name": name, "datetime": datetime, "parameters": parameters}
    for key in drop:
        del body[key]
    assert outcome(inline, body) == outcome(with_plain_nested(inline), body)


def test_a_valid_event_loads_the_same_through_both():
    body = {"name": "conversation.start", "datetime": {"created": "2014-01-01 00:00:00", "sent": "2014-01-01 00:00:01"},
            "parameters": {"conversation_id": 1, "type": "chat", "operator_id": 2, "website_id": 3, "group_id": 4,
                           "custom_data": {"k": "v"}, "new_field": 1}}
    schema = EVENT_SCHEMAS["conversation.start"]
    loaded = outcome(schema, body)
    assert loaded[0] == "loaded" and loaded == outcome(with_plain_nested(schema), body)
    assert "new_field" not in loaded[1]["parameters"]


def test_a_schema_with_hooks_is_refused():
    class Hooked(_Base):
        x = fields.Integer()

        @pre_load
        def shout(self, data, **kwargs):
            return data

    with pytest.raises(TypeError, match="without hooks"):
        type("Outer", (_Base,), {"inner": InlineNested(Hooked)})()
