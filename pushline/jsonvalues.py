"""JSON numbers beyond a float, read exactly: one decoder for the edge and the workers.

Python reads `1e400` as float('inf') and `1e-400` as 0.0, and refuses an integer
of more than 4300 digits (ValueError, not a JSONDecodeError). PostgreSQL's jsonb
stores all three exactly (numeric: up to 131072 digits before the point, 16383
after). So a body whose text holds such a number is decoded a second way, with
every number as an exact Decimal: the edge checks the range jsonb can store,
the workers key and re-encode the event without turning it into `Infinity`.

Most bodies have no such number; two C-speed regex scans prove it.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

# A 3-digit exponent or 17 digits: the spellings of a number that a float may
# not hold exactly (floats reach 1.8e308 with 15-17 significant digits, so
# 9007199254740993.0 would read as ...992 and not be the integer it equals;
# 4300-digit ints fail). Only where a JSON number can start (after `:`, `[` or
# `,`), so that ids such as "8e123..." inside strings rarely send a body down
# the slow path; tried only where a number starts, the scan stays linear.
_PATTERN = r"[:\[,]\s*-?(?:[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]{3}|[0-9.]{17})"
_MAYBE_HUGE = re.compile(_PATTERN.encode())
_MAYBE_HUGE_TEXT = re.compile(_PATTERN)

# numeric's limits (PostgreSQL docs, "Arbitrary Precision Numbers").
NUMERIC_MAX_INTEGER_DIGITS = 131072
NUMERIC_MAX_SCALE = 16383
_INT_DIGITS = 4000  # under Python's int-to-str limit (4300), so such ints still encode


def _int(text: str) -> int | Decimal:
    return int(text) if len(text) <= _INT_DIGITS else Decimal(text)


class NotJSON(ValueError):
    """NaN and Infinity: Python's json reads them, they are not JSON."""


def _constant(token: str):
    raise NotJSON(f"{token} is not a JSON value")


_EXACT = json.JSONDecoder(parse_float=Decimal, parse_int=_int, parse_constant=_constant)


def needs_exact(raw: bytes | str) -> bool:
    pattern = _MAYBE_HUGE if isinstance(raw, bytes) else _MAYBE_HUGE_TEXT
    return pattern.search(raw) is not None


class _Inexact(Exception):
    """A float whose spelling a float may not hold: the body is read exactly instead."""


def _float(text: str) -> float:
    # The spellings _PATTERN finds, told from the number's own text: 17 digits
    # (and points) in the mantissa, or a 3-digit exponent.
    mantissa, _, exponent = text.partition("e") if "e" in text else text.partition("E")
    if len(mantissa) - mantissa.startswith("-") >= 17 or len(exponent.lstrip("+-")) >= 3:
        raise _Inexact
    return float(text)


_FAST = json.JSONDecoder(parse_float=_float)
# A text this short has no integer past _INT_DIGITS digits, the other reason to read exactly.
_SHORT = _INT_DIGITS


def loads(text: str) -> Any:
    """JSON text as Python values, numbers beyond a float exactly (loads_exact).

    What `loads_exact(text) if needs_exact(text) else json.loads(text)` gave,
    without the regex scan: floats (rare in events) are checked one by one as
    the C scanner meets them; a text too short to hold a 4000-digit integer
    needs nothing more. One difference, on purpose: the scan read every float
    of a body exactly once any number in it (or a string like ":1e123")
    needed it; now only the floats that need it are. In such a body a float
    spelled with 16 digits past 2**53 and an exponent (9007199254740993e0)
    now reads as the float it rounds to, as it always did in other bodies."""
    if len(text) > _SHORT:
        return loads_exact(text) if needs_exact(text) else json.loads(text)
    try:
        return _FAST.decode(text)
    except _Inexact:
        return loads_exact(text)


def loads_exact(text: str) -> Any:
    """Every float as a Decimal, every integer past 4000 digits too. A number
    beyond even Decimal's range (an exponent of 20 digits) is NotJSON."""
    try:
        return _EXACT.decode(text)
    except InvalidOperation:
        raise NotJSON("a number beyond any range") from None


def storable(number: Decimal) -> bool:
    """Whether PostgreSQL's numeric (and so jsonb) can hold this number."""
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN/Infinity never come out of a JSON decoder
        return False
    if number.is_zero():  # 0e999999 is 0 (its exponent says nothing about its digits)
        return -exponent <= NUMERIC_MAX_SCALE
    return number.adjusted() < NUMERIC_MAX_INTEGER_DIGITS and -exponent <= NUMERIC_MAX_SCALE


def canonical_number(number: Decimal) -> Any:
    """The value an event's identity uses for an exact number.

    An integer value (below 4000 digits) is that int, as `integral_float`
    gives for floats; within a float's range, the float (so that `5e-001` and
    `0.5` are one value, as in the fast path); beyond it, a tagged text of the
    normalized number (a string holding U+0000 cannot come from an accepted body).
    """
    if number == number.to_integral_value() and (number.is_zero() or number.adjusted() < _INT_DIGITS):
        return int(number)
    as_float = float(number)
    if as_float not in (float("inf"), float("-inf")) and (as_float != 0.0 or number.is_zero()):
        return int(as_float) if as_float.is_integer() else as_float
    return "\x00number:" + str(number.normalize())


def integral_float(value: float) -> int:
    """The integer a float with no fraction was written as: `1e23` is 10**23,
    not the 99999999999999991611392 the float holds (repr is the shortest
    text that reads back as this float, i.e. how the sender most likely wrote it)."""
    return int(Decimal(repr(value)))


class _Placeholders(json.JSONEncoder):
    """Encodes Decimals as unique string tokens, swapped for the number text after."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.numbers: list[str] = []

    def default(self, o):
        if isinstance(o, Decimal):
            self.numbers.append(str(o))
            return f"\x00{len(self.numbers) - 1}\x00"
        return super().default(o)


_TOKEN = re.compile(r'"\\u0000(\d+)\\u0000"')


def dumps_exact(value: Any, **options) -> str:
    """json.dumps that writes Decimals as the numbers they are (`1E+400`, not a string)."""
    encoder = _Placeholders(**options)
    text = encoder.encode(value)
    return _TOKEN.sub(lambda m: encoder.numbers[int(m.group(1))], text)
