"""The workers' JSON reader: the same values as the rule it replaces, faster.

`jsonvalues.loads` decides per float (as the C scanner meets it) whether a body
must be read exactly; the rule it stands for is the regex scan `needs_exact`
over the whole text. Both must give equal values of the same types and the
same event identity for every body, numbers at every spelling and size.
"""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from pushline.identity import event_key
from pushline.jsonvalues import loads, loads_exact, needs_exact


def by_the_scan(text: str):
    return loads_exact(text) if needs_exact(text) else json.loads(text)


def typed(value):
    """A value with its types spelled out: 1 == 1.0 == Decimal(1) would hide a difference."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, Decimal):
        return ("decimal", str(value))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


digits = st.text("0123456789", min_size=1, max_size=40)
numbers = st.builds(
    lambda sign, whole, frac, exp: sign + whole.lstrip("0").rjust(1, "0") + frac + exp,
    st.sampled_from(["", "-"]),
    digits,
    st.one_of(st.just(""), st.builds(lambda d: "." + d, digits)),
    st.one_of(st.just(""), st.builds(lambda e, s, d: e + s + d, st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                                      st.text("0123456789", min_size=1, max_size=5))),
)
# Strings that look like numbers to a scan that only knows where numbers may start.
decoys = st.text(":[, 0123456789.eE-", max_size=30)


@settings(max_examples=600, deadline=None)
@given(values=st.lists(st.one_of(numbers, decoys.map(json.dumps)), min_size=1, max_size=6),
       spaced=st.booleans())
def test_same_values_and_identity_as_the_scan(values, spaced):
    sep = ", " if spaced else ","
    params = sep.join(f'"k{i}":{v}' for i, v in enumerate(values))
    text = '{"name":"conversation.start","datetime":{"created":"2024-01-01 00:00:00"},"parameters":{' + params + "}}"
    expected = by_the_scan(text)
    got = loads(text)
    assert event_key(got) == event_key(expected)
    for key, value in got["parameters"].items():
        same_value(value, expected["parameters"][key])


def same_value(got, expected):
    """Equal, and of the same type, but that the scan reads every float of a body
    exactly once any number in it (or a string like ":12345678901234567") needs
    it, where the new reader does so for the floats that need it only."""
    if isinstance(got, float) and isinstance(expected, Decimal):
        assert float(expected) == got and not needs_exact(json.dumps({"k": got}))
    else:
        assert typed(got) == typed(expected)


def test_spellings_a_float_cannot_hold_are_read_exactly():
    assert loads('{"a": 1e400}')["a"] == Decimal("1e400")
    assert loads('{"a": 9007199254740993.0}')["a"] == Decimal("9007199254740993.0")
    assert loads('{"a": 1.5e-0300}')["a"] == Decimal("1.5e-300")
    assert type(loads('{"a": 0.25, "b": 12}')["a"]) is float


def test_a_long_text_with_a_huge_integer_keeps_it_exact():
    huge = "9" * 5000  # past Python's int-from-text limit (4300 digits)
    assert loads('{"a": ' + huge + "}")["a"] == Decimal(huge)
