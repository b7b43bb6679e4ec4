"""COPY's text format, checked by PostgreSQL itself: what goes in comes back."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo

import pytest

from pushline.pgcopy import RawJSON, copy_rows, format_rows

AWKWARD = ["plain", "tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "", "quote\"s", "é ✓ 😀",
           "{braces,commas}", "NULL"]


@pytest.fixture
def cur(db):
    with db.cursor() as cur:
        cur.execute("""CREATE TEMP TABLE copy_check (n integer, t text, f double precision, b boolean,
                       at timestamptz, tags text[], doc jsonb)""")
        yield cur


def test_every_type_and_awkward_text_round_trips(cur):
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    rows = [
        (i, text, i / 3, i % 2 == 0, dt.datetime(2014, 1, 1, 0, 0, i, 123456, tzinfo=paris), [text, "x,y", text],
         {"k": text, "n": [1, 2.5, None, True]})
        for i, text in enumerate(AWKWARD)
    ]
    rows.append((None, None, None, None, None, None, None))
    copy_rows(cur, "copy_check", ("n", "t", "f", "b", "at", "tags", "doc"), rows)
    cur.execute("SELECT n, t, f, b, at, tags, doc FROM copy_check ORDER BY n NULLS LAST")
    back = cur.fetchall()
    assert len(back) == len(rows)
    for sent, got in zip(rows, back, strict=True):
        assert got == sent


def test_raw_json_text_is_stored_as_the_json_it_spells(cur):
    text = '{"a": "tab\\there", "b": [1, {"c": "\\u00e9"}], "d": "back\\\\slash"}'
    copy_rows(cur, "copy_check", ("n", "doc"), [(1, RawJSON(text))])
    cur.execute("SELECT doc FROM copy_check")
    assert cur.fetchone()[0] == json.loads(text)


def test_a_type_copy_cannot_spell_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot COPY a set"):
        format_rows([(1, {1, 2})])
