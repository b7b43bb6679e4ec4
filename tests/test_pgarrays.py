"""pushline.pgarrays: every value comes back from PostgreSQL as it went in."""

from __future__ import annotations

import datetime as dt

import psycopg2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushline.pgarrays import array

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
INSTANTS = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                        timezones=st.just(dt.UTC))


@pytest.fixture(scope="module")
def cur(database_url):
    conn = psycopg2.connect(database_url, options="-c TimeZone=UTC")
    yield conn.cursor()
    conn.close()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), TEXT), max_size=20))
def test_text_arrays_round_trip(cur, values):
    # Quotes, backslashes, braces, commas, blanks, the word NULL, empty strings.
    cur.execute("SELECT %s::text[]", (array(values),))
    assert cur.fetchone()[0] == values


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), max_size=20), st.lists(INSTANTS, max_size=20))
def test_bigint_and_instant_arrays_round_trip(cur, ints, instants):
    cur.execute("SELECT %s::bigint[], %s::timestamptz[]", (array(ints), array(instants)))
    assert cur.fetchone() == (ints, instants)


def test_the_planner_knows_the_length(cur):
    # The reason to send a literal rather than a parameter the server evaluates:
    # the row estimate of unnest is the array's length, as it was for ARRAY[...].
    cur.execute("EXPLAIN SELECT * FROM unnest(%s::bigint[])", (array(range(345)),))
    assert "rows=345 " in cur.fetchone()[0]


def test_other_types_are_refused():
    with pytest.raises(TypeError, match="float"):
        array([1.5])
