"""Hostile bodies through real processes: gunicorn, Redis and a Celery worker.

CONTRACT 3 and 6: "A 202 is a promise" and "No input and no date stops the
pipeline". Every push answered 202 ends in `events` with a final status
(processed, rejected or unhandled), found by its receipt id in
`events.receipt_ids`; a body the database cannot store gets 400 at the edge;
nothing ever gets a 5xx; a body delivered again, as the same bytes or
re-spelled (key order, whitespace, escapes, number spelling, another `sent`),
lands in the same row; and ordinary events sent after the hostile ones are
processed by a worker that is still up.

The pipeline runs with PUSH_TIMEZONE=Europe/Paris, so naive datetimes are
read in Paris time (daylight-saving days, LMT before 1911).

The JSON texts are built here by hand, not with json.dumps: numbers such as
1e400, 1e-400 or a 5001-digit integer have no Python float or printable int.
Which bodies PostgreSQL can store is asked of PostgreSQL itself (`::jsonb`),
not of the product's code.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from pathlib import Path

import psycopg2
import pytest
import redis
from hypothesis import HealthCheck, Phase, example, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests import http_client as http
from tests.conftest import RUN_ID, TOKEN, Proc, examples, make_settings, start_web, start_worker, wait_for
from tests.helpers import conversation, login, logout

pytestmark = pytest.mark.slow

LIMIT = 65536  # MAX_BODY_BYTES's default
MAX_DEPTH = 32
FINAL = {"processed", "rejected", "unhandled"}
KNOWN = ("operator.login", "operator.logout", "conversation.start", "conversation.end")
HOSTILE_IDS = range(9_000_000, 9_100_000)  # ids the hostile bodies may use
ORDINARY_IDS = itertools.count(9_500_000)  # fresh ids for the ordinary events after each example
STORE_TIMEOUT = 30.0


# ---------------------------------------------------------------- JSON text, by hand

@dataclass(frozen=True)
class Num:
    text: str  # a JSON number as written


@dataclass(frozen=True)
class Str:
    value: str  # may hold U+0000 or a lone surrogate: always written escaped then


@dataclass(frozen=True)
class Lit:
    text: str  # true, false, null


@dataclass(frozen=True)
class Raw:
    text: str  # written verbatim: not JSON at all (NaN, 01, a raw tab in a string...)


@dataclass(frozen=True)
class Arr:
    items: tuple


@dataclass(frozen=True)
class Obj:
    pairs: tuple  # ((key, node), ...), keys distinct

    def get(self, key):
        return next((v for k, v in self.pairs if k == key), None)


TRUE, FALSE, NULL = Lit("true"), Lit("false"), Lit("null")


def node(value) -> object:
    """A node from a Python value (ints must be printable; huge ones are Num texts)."""
    if isinstance(value, (Num, Str, Lit, Raw, Arr, Obj)):
        return value
    if value is None:
        return NULL
    if value is True:
        return TRUE
    if value is False:
        return FALSE
    if isinstance(value, int):
        return Num(str(value))
    if isinstance(value, float):
        return Num(repr(value))
    if isinstance(value, str):
        return Str(value)
    if isinstance(value, (list, tuple)):
        return Arr(tuple(node(v) for v in value))
    if isinstance(value, dict):
        return Obj(tuple((k, node(v)) for k, v in value.items()))
    raise TypeError(value)


def depth(n) -> int:
    if isinstance(n, Arr):
        return 1 + max((depth(v) for v in n.items), default=0)
    if isinstance(n, Obj):
        return 1 + max((depth(v) for _, v in n.pairs), default=0)
    return 0


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def write_string(value: str, rng: random.Random | None) -> str:
    """A JSON string; with rng, characters are escaped at random (same JSON value)."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch] if rng is None or rng.random() < 0.5 else f"\\u{code:04x}")
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}" if rng is None or rng.random() < 0.5 else f"\\u{code:04X}")
        elif rng is not None and rng.random() < 0.15:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            elif ch == "/" and rng.random() < 0.5:
                out.append("\\/")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def is_int_syntax(text: str) -> bool:
    return "." not in text and "e" not in text.lower()


def respell_number(text: str, rng: random.Random) -> str:
    """Another spelling of the same number: 1e400 -> 1E+400, 0.1e401, 10e399...

    Integers keep their integer spelling unless a double holds them exactly
    (then 5 may become 5.0 or 5e0); the shift of the point keeps PostgreSQL's
    scale, so a storable number stays storable."""
    value = Decimal(text)
    if is_int_syntax(text) and (len(text) > 17 or abs(int(text)) > 2**53):
        return text
    sign, digits, exp = value.as_tuple()
    if not isinstance(exp, int):
        return text
    digits = "".join(map(str, digits))
    if value.is_zero():
        return rng.choice(["0", "-0", "0.0", "0e0", "-0.0E+00"]) if abs(exp) < 100 else text
    point = rng.randint(0, len(digits))  # digits[:point] . digits[point:]
    whole, frac = digits[:point] or "0", digits[point:]
    e = exp + len(frac)
    mantissa = whole + ("." + frac if frac else "")
    letter = rng.choice("eE")
    if e == 0 and frac and rng.random() < 0.5:
        spelled = mantissa
    else:
        esign = "-" if e < 0 else rng.choice(["", "+"])
        spelled = f"{mantissa}{letter}{esign}{'0' * rng.randint(0, 2)}{abs(e)}"
    return ("-" if sign else "") + spelled


def write(n, rng: random.Random | None = None) -> str:
    """The JSON text of a node. Without rng: as a sender would, `json.dumps` style.
    With rng: the same JSON value written otherwise (key order, whitespace,
    escapes, number spellings)."""
    ws = (lambda: "") if rng is None else (lambda: rng.choice(["", "", " ", "\n", "\t", "\r\n  "]))
    if isinstance(n, Num):
        return n.text if rng is None else respell_number(n.text, rng)
    if isinstance(n, Str):
        return write_string(n.value, rng)
    if isinstance(n, (Lit, Raw)):
        return n.text
    if isinstance(n, Arr):
        sep = ", " if rng is None else None
        parts = [ws() + write(v, rng) + ws() for v in n.items]
        return "[" + (sep or ",").join(parts) + "]"
    if isinstance(n, Obj):
        pairs = list(n.pairs)
        if rng is not None:
            rng.shuffle(pairs)
        sep, colon = (", ", ": ") if rng is None else (",", ":")
        parts = [ws() + write_string(k, rng) + ws() + colon + ws() + write(v, rng) + ws() for k, v in pairs]
        return "{" + sep.join(parts) + "}"
    raise TypeError(n)


EXACT = Context(prec=1_000_000, Emax=MAX_EMAX, Emin=MIN_EMIN)  # normalize() must not round


def canonical(n):
    """The JSON value of a node, hashable: numbers exact, objects unordered."""
    if isinstance(n, Num):
        d = Decimal(n.text)
        return ("n", "0" if d.is_zero() else str(d.normalize(EXACT)))
    if isinstance(n, Str):
        return ("s", n.value)
    if isinstance(n, Lit):
        return ("l", n.text)
    if isinstance(n, Raw):
        return ("r", n.text)
    if isinstance(n, Arr):
        return ("a", tuple(canonical(v) for v in n.items))
    if isinstance(n, Obj):
        return ("o", frozenset((k, canonical(v)) for k, v in n.pairs))
    return ("l", "null")  # missing counts as null (the contract does not tell them apart)


def identity(body: Obj):
    """CONTRACT 4: same name, same datetime.created text, equal parameters as JSON values."""
    stamp = body.get("datetime")
    created = stamp.get("created") if isinstance(stamp, Obj) else None
    return canonical(body.get("name")), canonical(created), canonical(body.get("parameters"))


# ---------------------------------------------------------------- what to send

BIG = "1" + "0" * 5000  # 10**5000 written out (json.dumps cannot print it)
NUMBERS_STORABLE = [
    "0", "-0", "1", "-1", "7", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
    "-9223372036854775809", "1180591620717411303424", "100000000000000000001", BIG, "-" + "9" * 4301,
    "1e400", "-1e400", "1E+400", "1e-400", "-1e-400", "5e-324", "1.7976931348623157e308",
    "1.7976931348623159e308", "1e308", "1e309", "2.2250738585072014e-308", "0.1", "1.0", "1.5", "-0.0",
    "0e999999", "1e131071", "-9.99e131071", "1e-16383", "0." + "0" * 16382 + "1", "0.000e5", "1e0400",
    "123456789012345678901234567890.123456789", "1E-7", "3.141592653589793",
]
NUMBERS_UNSTORABLE = ["1e131072", "-1e131072", "1e-16384", "1.0e-16383", "0.0e-20000", "1e2147483648"]
RAW_NOT_JSON = ["NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1", "'x'", '"a\tb"', "0x10", "True"]

STRINGS = [
    "", "x", "😀", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷", "مرحبا بالعالم", "\u202eevil\u202c", "\u0301", "e\u0301", "é",
    "\ufeff", "\u2028\u2029", "\uffff", "\U0010ffff", "\\", '"', "</script>", "%s%n", "' OR 1=1 --", "\x01\x1f",
    "\t\n\r", "null", "１２３", "٢٠٢٥", "chat", "CHAT", "chat\u0301", "video ", "a" * 1000, "😀" * 300,
]
UNSTORABLE_STRINGS = ["\x00", "a\x00b", "\ud800", "x\udfffy"]
TYPES = ["chat", "call", "video"]

NAMES = [*KNOWN, "operator.pause", "conversation.transfer", "", "conversation.START", "operator.login ",
         "\u202eoperator.login", "😀", "a" * 300, "operator", "conversation.start\x00"]

# Datetimes that have broken pipelines: DST days in Paris, LMT before 1911,
# year and month ends, offsets of every shape, dates that do not exist.
SPECIAL_DATETIMES = [
    "2014-01-01 00:00:00", "2025-03-30 02:30:00", "2025-10-26 02:30:00", "2025-03-30 02:00:00",
    "2025-03-30 03:00:00", "2025-10-26 02:59:59", "2025-10-26 03:00:00", "2025-03-30 01:59:59",
    "2024-02-29 12:00:00", "2025-02-29 12:00:00", "2025-02-30 00:00:00", "2025-04-31 00:00:00",
    "2025-12-31 23:59:59", "2026-01-01 00:30:00", "2025-01-31 23:30:00", "2025-02-01 00:30:00",
    "9999-12-31 23:59:59", "0001-01-01 00:00:00", "0001-01-01 00:09:21", "0001-01-01 00:09:22",
    "1911-03-11 00:00:00", "1911-03-10 23:59:59", "1940-06-14 23:00:00", "1970-01-01 00:00:00",
    "2038-01-19 03:14:08", "0000-01-01 00:00:00", "2025-13-01 00:00:00", "2025-06-15 24:00:00",
    "2025-06-15 23:60:00", "2016-12-31 23:59:60", "９９９９-12-31 23:59:59", "٢٠٢٥-٠٦-١٥ ١٢:٠٠:٠٠",
    "2025-06-15 12:00:00\n", " 2025-06-15 12:00:00", "2025-06-15  12:00:00",
    "9999-12-31T23:59:59+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
    "2025-03-30T02:30:00+01:00", "2025-03-30T02:30:00+02:00", "2025-10-26T02:30:00+01:00",
    "2025-06-15T12:00:00+05:45", "2025-06-15T12:00:00-09:30", "2025-06-15T12:00:00+12:45",
    "2025-06-15T12:00:00+14:00", "2025-06-15T12:00:00-14:00", "2025-06-15T12:00:00-00:00",
    "2025-06-15T12:00:00.123456789Z", "2025-06-15T12:00:00,5+01:00", "2025-06-15T12:00:00+0545",
    "2025-06-15T12:00:00+05", "2025-06-15T12:00:00+05:45:30", "2025-06-15T12:00:00+05:45:30.5",
    "2025-06-15T12:00:00+15:00", "2025-06-15T12:00:00+20:00", "2025-06-15T12:00:00-23:59",
    "2025-W24-7T12:00:00Z", "20250615T120000+0545", "2025-06-15", "2025-06-15T12", "2025-06-15T12:00:00",
    "2025-06-15T24:00:00Z", "2025-06-15T12:00:00+99:99", "now", "", "-0001-01-01 00:00:00",
    "10000-01-01 00:00:00", "2025-06-15 12:00:00 +05:45",
]


def _naive(y, mo, d, h, mi, s) -> str:
    return f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"


@st.composite
def datetime_texts(draw) -> str:
    kind = draw(st.sampled_from(["special", "special", "naive", "iso"]))
    if kind == "special":
        return draw(st.sampled_from(SPECIAL_DATETIMES))
    year = draw(st.sampled_from([1, 2, 1000, 1582, 1900, 1970, 2000, 2024, 2025, 2038, 9998, 9999])
                | st.integers(1, 9999))
    month = draw(st.integers(1, 12))
    day = draw(st.sampled_from([1, 28, 29, 30, 31]) | st.integers(1, 31))
    clock = (draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59)))
    if kind == "naive":
        return _naive(year, month, day, *clock)
    hours = draw(st.integers(0, 14))
    minutes = 0 if hours == 14 else draw(st.sampled_from([0, 30, 45]) | st.integers(0, 59))
    offset = draw(st.sampled_from(["Z", f"+{hours:02d}:{minutes:02d}", f"-{hours:02d}:{minutes:02d}",
                                   f"+{hours:02d}{minutes:02d}"]))
    fraction = draw(st.sampled_from(["", ".0", ".5", ".123456", ".999999"]))
    return f"{year:04d}-{month:02d}-{day:02d}T{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d}{fraction}{offset}"


def keys() -> st.SearchStrategy[str]:
    return st.sampled_from(["a", "", "😀", "a.b", "__proto__", "constructor", "k" * 200, "\u202ek", "é", "e\u0301",
                            "operator_id", "\\u0000", "\t"]) | st.text(max_size=8)


def leaves() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(NUMBERS_STORABLE).map(Num),
        st.sampled_from(STRINGS).map(Str),
        st.sampled_from([TRUE, FALSE, NULL]),
        st.integers().map(node),
        st.floats(allow_nan=False, allow_infinity=False).map(node),
        st.text(max_size=12).map(Str),
    )


def values() -> st.SearchStrategy:
    return st.recursive(
        leaves(),
        lambda children: st.lists(children, max_size=4).map(lambda v: Arr(tuple(v)))
        | st.dictionaries(keys(), children, max_size=4).map(lambda d: Obj(tuple(d.items()))),
        max_leaves=8,
    )


def ids() -> st.SearchStrategy:
    return st.one_of(
        st.integers(HOSTILE_IDS.start, HOSTILE_IDS.stop - 1).map(node),
        st.integers(HOSTILE_IDS.start, HOSTILE_IDS.stop - 1).map(node),
        st.sampled_from(["9223372036854775807", "-9223372036854775808", "9223372036854775808", "1180591620717411303424",
                         BIG, "-" + BIG, "1e400", "-1e400", "1e-400", "5e-324", "1.7976931348623157e308", "9000000.0",
                         "9000001e0", "9.000002E+6", "-0"]).map(Num),
        st.sampled_from([TRUE, FALSE, NULL, Str("9000003"), Str(""), Arr(()), Obj(())]),
        values(),
    )


def nested(levels: int, leaf) -> object:
    """`levels` containers, objects and arrays in turn, around `leaf`."""
    out = leaf
    for i in range(levels):
        out = Obj((("k", out),)) if i % 2 else Arr((out,))
    return out


@st.composite
def custom_data(draw):
    shape = draw(st.sampled_from(["plain", "deep", "wide", "wrong"]))
    if shape == "deep":  # custom_data is the body's 3rd level: 30 levels in it reach 32 in all
        levels = draw(st.integers(1, 30))
        return Obj((("deep", nested(levels - 1, draw(leaves()))),))
    if shape == "wide":
        count = draw(st.sampled_from([99, 100, 101, 150]) | st.integers(0, 120))
        value = draw(st.sampled_from([Num("1"), Str("v"), NULL, Num("1e400"), Str("😀")]))
        return Obj(tuple((f"key-{i}", value) for i in range(count)))
    if shape == "wrong":
        return draw(st.sampled_from([NULL, Arr(()), Str("{}"), Num("1"), TRUE]))
    return draw(st.dictionaries(keys(), values(), max_size=5).map(lambda d: Obj(tuple(d.items()))))


FIELDS = {
    "operator.login": ("operator_id",),
    "operator.logout": ("operator_id",),
    "conversation.start": ("conversation_id", "type", "operator_id", "website_id", "group_id", "custom_data"),
    "conversation.end": ("conversation_id", "type", "operator_id", "website_id", "group_id"),
}


# Which part of a body is hostile: none, one of these, or all of them at once.
PARTS = ("name", "datetime", "created", "sent", "parameters", "field", "more-fields", "extra")


class Spoiler:
    """Draws the good or the hostile choice for each part of a body."""

    def __init__(self, draw):
        self.draw = draw
        self.part = draw(st.sampled_from([None] * 6 + list(PARTS) + ["all"] * 3), label="spoiled part")

    def bad(self, part: str, rate: int = 3) -> bool:
        if self.part == "all":
            return self.draw(st.integers(0, rate)) == 0
        return self.part == part


@st.composite
def parameters(draw, name: str, spoil: Spoiler):
    fields = FIELDS.get(name) or draw(st.sampled_from(list(FIELDS.values())))
    spoiled = draw(st.sampled_from(fields)) if spoil.bad("field", 0) else None
    pairs = []
    for field in fields:
        bad = field == spoiled or (spoil.part == "all" and spoil.bad("field"))
        if bad and draw(st.integers(0, 3)) == 0:
            continue  # missing
        if field == "type":
            value = draw(st.sampled_from(STRINGS).map(Str) | values()) if bad else Str(draw(st.sampled_from(TYPES)))
        elif field == "custom_data":
            value = draw(values()) if bad else draw(custom_data())
        else:
            value = draw(ids()) if bad else node(draw(st.integers(HOSTILE_IDS.start, HOSTILE_IDS.stop - 1)))
        pairs.append((field, value))
    if spoil.bad("more-fields"):
        extra = draw(st.dictionaries(keys(), values(), min_size=1, max_size=3))
        pairs += [(k, v) for k, v in extra.items() if k not in fields]
    return Obj(tuple(pairs))


@st.composite
def push_bodies(draw) -> Obj:
    """One Push API event: valid, hostile in one part, or hostile all over."""
    spoil = Spoiler(draw)
    if spoil.bad("name"):
        name_node = draw(st.sampled_from(NAMES).map(Str) | st.text(max_size=10).map(Str)
                         | st.sampled_from([NULL, Num("1"), Arr((Str("operator.login"),))]))
    else:
        name_node = Str(draw(st.sampled_from(KNOWN)))
    name = name_node.value if isinstance(name_node, Str) else "?"
    pairs = [("name", name_node)]
    if spoil.bad("datetime"):
        if draw(st.booleans()):
            pairs.append(("datetime", draw(values())))
    else:
        stamp = []
        for which in ("created", "sent"):
            if not spoil.bad(which):
                stamp.append((which, Str(draw(datetime_texts()))))
            elif draw(st.booleans()):
                stamp.append((which, draw(values())))
        pairs.append(("datetime", Obj(tuple(stamp))))
    if spoil.bad("parameters"):
        if draw(st.booleans()):
            pairs.append(("parameters", draw(values())))
    else:
        pairs.append(("parameters", draw(parameters(name, spoil))))
    if spoil.bad("extra", 1):
        # Something the database cannot store, too deep, not JSON, near the size limit, or unknown.
        extra = draw(st.sampled_from(["unstorable", "too-deep", "deep-ok", "not-json", "long", "long", "unknown"]))
        if extra == "unstorable":
            bad = draw(st.sampled_from(NUMBERS_UNSTORABLE).map(Num) | st.sampled_from(UNSTORABLE_STRINGS).map(Str)
                       | st.sampled_from(UNSTORABLE_STRINGS).map(lambda s: Obj(((s, TRUE),))))
            pairs.append(("extra", bad))
        elif extra in ("too-deep", "deep-ok"):
            levels = MAX_DEPTH if extra == "too-deep" else MAX_DEPTH - 1  # under the body's own level
            levels = draw(st.sampled_from([levels, levels + 40])) if extra == "too-deep" else levels
            pairs.append(("extra", nested(levels, Num("1"))))
        elif extra == "not-json":
            pairs.append(("extra", Raw(draw(st.sampled_from(RAW_NOT_JSON)))))
        elif extra == "long":
            pairs.append(("pad", Str("")))  # filled to the drawn size in padded()
        else:
            pairs.append((draw(keys().filter(lambda k: k not in ("name", "datetime", "parameters"))), draw(values())))
    return Obj(tuple(pairs))


@dataclass
class Body:
    tree: Obj
    text: bytes  # as first sent

    @property
    def id(self):
        return identity(self.tree)


def padded(tree: Obj, draw) -> Body:
    """A body whose `pad` string brings it to a drawn size around the limit."""
    if tree.get("pad") is None:
        return Body(tree, write(tree).encode())
    size = draw(st.sampled_from([LIMIT, LIMIT - 1, LIMIT + 1]) | st.integers(1000, LIMIT))
    filler = draw(st.sampled_from(["x", "😀", "é", "مر"]))
    base = len(write(tree).encode())
    room = max(0, size - base)
    unit = len(filler.encode())
    pad = filler * (room // unit) + "y" * (room % unit)
    tree = Obj(tuple((k, Str(pad) if k == "pad" else v) for k, v in tree.pairs))
    return Body(tree, write(tree).encode())


@st.composite
def rounds(draw) -> list[Body]:
    bodies = [padded(draw(push_bodies()), draw) for _ in range(draw(st.integers(1, 5)))]
    if draw(st.booleans()):  # the same event twice in one round, another `sent`
        first = bodies[0].tree
        stamp = first.get("datetime")
        if isinstance(stamp, Obj):
            stamp = Obj(tuple((k, v) for k, v in stamp.pairs if k != "sent") + (("sent", Str("2014-01-01 00:00:09")),))
            twin = Obj(tuple((k, stamp if k == "datetime" else v) for k, v in first.pairs))
            bodies.append(Body(twin, write(twin).encode()))
    return bodies


# ---------------------------------------------------------------- the pipeline

@dataclass
class Hostile:
    base: str
    web: Proc
    workers: list[Proc]
    db: object
    oracle: object  # a connection only used to ask PostgreSQL what it can store
    redis: redis.Redis
    prefix: str
    settings: object
    logs: Path

    @property
    def worker(self) -> Proc:
        return self.workers[-1]

    def revive(self) -> None:
        """A worker that died failed its example; the next examples get a fresh one."""
        if self.worker.popen.poll() is not None:
            self.workers.append(start_worker(self.settings, self.logs, name=f"hostile{len(self.workers) + 1}"))

    def worker_log(self) -> str:
        return "\n".join(p.output() for p in self.workers)


@pytest.fixture(scope="module")
def hostile(database_url, redis_url, tmp_path_factory):
    prefix = f"pushline-hostile-{RUN_ID}"
    settings = make_settings(database_url, redis_url, PUSHLINE_QUEUE_PREFIX=prefix, PUSH_TIMEZONE="Europe/Paris")
    logs = tmp_path_factory.mktemp("hostile")
    web, base = start_web(settings, logs)
    worker = start_worker(settings, logs, name="hostile1")
    db = psycopg2.connect(database_url)
    db.autocommit = True
    oracle = psycopg2.connect(database_url)
    oracle.autocommit = True
    client = redis.Redis.from_url(redis_url)
    pipe = Hostile(base, web, [worker], db, oracle, client, prefix, settings, logs)
    try:
        yield pipe
    finally:
        web.stop()
        for proc in pipe.workers:
            proc.stop()
        db.close()
        oracle.close()
        client.close()


def pg_stores(pipe: Hostile, text: bytes) -> bool:
    """Whether PostgreSQL's jsonb takes this text: the contract's "what PostgreSQL can store"."""
    try:
        with pipe.oracle.cursor() as cur:
            cur.execute("SELECT (%s::jsonb) IS NOT NULL", (text.decode("utf-8"),))
        return True
    except psycopg2.Error:
        return False


def expected_status(pipe: Hostile, body: Body) -> int:
    """CONTRACT 3, read independently of the product: 413, 400 or 202."""
    if len(body.text) > LIMIT:
        return 413
    if depth(body.tree) > MAX_DEPTH or not isinstance(body.tree.get("name"), Str):
        return 400
    if not pg_stores(pipe, body.text):
        return 400  # not JSON, or JSON the database cannot store
    return 202


def push(pipe: Hostile, text: bytes) -> http.Response:
    resp = http.request("POST", f"{pipe.base}/push/{TOKEN}", text, {"Content-Type": "application/json"},
                        timeout=30)
    assert resp.status != 0, "no answer from gunicorn"
    assert resp.status < 500, (resp.status, resp.body, text[:300])
    return resp


def send(pipe: Hostile, body: Body) -> str | None:
    """Push one body; the receipt id of a 202, else None (after checking the status)."""
    resp = push(pipe, body.text)
    expected = expected_status(pipe, body)
    assert resp.status == expected, (
        f"expected {expected}, got {resp.status} {resp.body!r} for a body of {len(body.text)} bytes:"
        f" {body.text[:400]!r}")
    if resp.status != 202:
        assert "error" in resp.json()
        return None
    receipt = resp.json()["id"]
    assert isinstance(receipt, str) and receipt
    return receipt


def worker_lines(pipe: Hostile, receipts) -> str:
    wanted = set(receipts)
    return "\n".join(line[:2000] for line in pipe.worker_log().splitlines()
                     if any(r in line for r in wanted) or "Traceback" in line or "worker exits" in line)[-6000:]


def account(pipe: Hostile, receipts: list[str], what: str) -> tuple[dict[str, tuple], dict[str, bytes]]:
    """Wait until every receipt is either in `events` or parked as a dead letter (never stored).

    Returns ({receipt: (id, status, name, deliveries, receipt_ids)}, {dead receipt: reason})."""
    dead_key, reasons_key = f"{pipe.prefix}:dead-letters", f"{pipe.prefix}:dead-letter-reasons"
    state: dict = {"rows": {}, "dead": {}}

    def look():
        with pipe.db.cursor() as cur:
            cur.execute("SELECT r, e.id, e.status, e.name, e.deliveries, e.receipt_ids FROM unnest(%s::text[]) r"
                        " JOIN events e ON e.receipt_ids && ARRAY[r]", (receipts,))
            state["rows"] = rows = {r: rest for r, *rest in cur.fetchall()}
        missing = [r for r in receipts if r not in rows]
        reasons = pipe.redis.hmget(reasons_key, missing) if missing and pipe.redis.llen(dead_key) else []
        state["dead"] = dead = {r: why for r, why in zip(missing, reasons, strict=False) if why is not None}
        if len(rows) + len(dead) == len(set(receipts)):
            return True
        assert pipe.worker.popen.poll() is None, f"{what}: the worker died:\n{worker_lines(pipe, missing)}"
        return False

    try:
        wait_for(look, timeout=STORE_TIMEOUT, interval=0.05, what=what)
    except AssertionError as exc:
        if "timed out" not in str(exc):
            raise
        missing = [r for r in receipts if r not in state["rows"] and r not in state["dead"]]
        raise AssertionError(f"{exc}: receipts {missing} neither in events nor dead letters\n"
                             f"worker log:\n{worker_lines(pipe, missing)}") from None
    return state["rows"], state["dead"]


def stored(pipe: Hostile, receipts: list[str], what: str) -> dict[str, tuple]:
    """Every receipt in `events`: a receipt parked as a dead letter fails, with its reason and the log."""
    if not receipts:
        return {}
    rows, dead = account(pipe, receipts, what)
    assert not dead, (f"{what}: a 202 ended as a dead letter, not in events: {dead}\n"
                      f"worker log:\n{worker_lines(pipe, dead)}")
    return rows


def check_rows(rows: dict[str, tuple], sent: list[tuple[Body, str]]) -> None:
    for body, receipt in sent:
        event_id, status, name, deliveries, receipt_ids = rows[receipt]
        assert status in FINAL, (status, body.text[:300])
        assert deliveries == len(receipt_ids) == len(set(receipt_ids)), (deliveries, receipt_ids)
        assert name == body.tree.get("name").value
        if name not in KNOWN:
            assert status == "unhandled", (status, body.text[:300])
    # One row per distinct event: equal identities share a row, different ones do not.
    by_identity: dict = {}
    for body, receipt in sent:
        by_identity.setdefault(body.id, set()).add(rows[receipt][0])
    for row_ids in by_identity.values():
        assert len(row_ids) == 1, f"one event, several rows {row_ids}: {[b.text[:200] for b, _ in sent]}"
    all_rows = [next(iter(r)) for r in by_identity.values()]
    assert len(all_rows) == len(set(all_rows)), f"distinct events share a row: {[b.text[:200] for b, _ in sent]}"


def payload_is(pipe: Hostile, event_id: int, text: bytes) -> bool:
    with pipe.db.cursor() as cur:
        cur.execute("SELECT payload = %s::jsonb FROM events WHERE id = %s", (text.decode(), event_id))
        return cur.fetchone()[0]


def respelled(body: Body, rng: random.Random, new_sent: bool) -> Body:
    tree = body.tree
    if new_sent and isinstance(tree.get("datetime"), Obj):
        stamp = tree.get("datetime")
        stamp = Obj(tuple((k, v) for k, v in stamp.pairs if k != "sent") + (("sent", Str("2030-01-01T00:00:00Z")),))
        tree = Obj(tuple((k, stamp if k == "datetime" else v) for k, v in tree.pairs))
    text = write(tree, rng).encode()
    if len(text) > LIMIT:  # whitespace and escapes cost bytes: fewer of them
        text = write(tree).encode()
    return Body(tree, text)


def ordinary_events_flow(pipe: Hostile) -> None:
    """Events behind the hostile ones are processed, in Paris time; the worker is up."""
    op = next(ORDINARY_IDS)
    bodies = [login(op, "2025-01-15 10:00:00"), logout(op, "2025-01-15 11:30:00"),
              conversation("start", op, "2025-07-01 09:00:00", op=op, custom_data={"ordinary": True}),
              conversation("end", op, "2025-07-01 09:10:00", op=op)]
    receipts = []
    for payload in bodies:
        resp = http.post_json(f"{pipe.base}/push/{TOKEN}", payload)
        assert resp.status == 202, (resp.status, resp.body)
        receipts.append(resp.json()["id"])
    rows = stored(pipe, receipts, "the ordinary events behind the hostile ones")
    assert {rows[r][1] for r in receipts} == {"processed"}, rows
    with pipe.db.cursor() as cur:
        cur.execute("SELECT login_at::text, logout_at::text, duration_seconds FROM operator_sessions"
                    " WHERE operator_id = %s", (op,))
        assert cur.fetchall() == [("2025-01-15 09:00:00+00", "2025-01-15 10:30:00+00", 5400)]
        cur.execute("SELECT started_at::text, ended_at::text, duration_seconds, type, operator_id FROM conversations"
                    " WHERE conversation_id = %s", (op,))
        assert cur.fetchall() == [("2025-07-01 07:00:00+00", "2025-07-01 07:10:00+00", 600, "chat", op)]
    assert pipe.worker.popen.poll() is None, pipe.worker.output()[-4000:]
    assert "worker exits" not in pipe.worker_log(), worker_lines(pipe, [])


HYPO = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                  HealthCheck.data_too_large, HealthCheck.large_base_example])


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("text, status", [
    (b'{"name": "x", "v": 1e131072}', 400),
    (b'{"name": "x", "v": -1e131072}', 400),
    (b'{"name": "x", "v": 1e-16384}', 400),
    (b'{"name": "x", "v": "a\\u0000b"}', 400),
    (b'{"name": "x", "v": {"k\\u0000": 1}}', 400),
    (b'{"name": "x", "v": ' + b"[" * 32 + b"]" * 32 + b"}", 400),
    (b'{"name": "x", "v": 1e131071}', 202),
    (b'{"name": "x", "v": 1e-16383}', 202),
    (b'{"name": "x", "v": ' + b"[" * 31 + b"]" * 31 + b"}", 202),
    (b'{"name": "operator.login", "datetime": {"created": "2025-03-30 02:30:00", "sent": "2025-03-30 02:30:00"},'
     b' "parameters": {"operator_id": ' + BIG.encode() + b"}}", 202),
])
def test_what_the_database_cannot_store_is_400_at_the_edge(hostile, text, status):
    resp = push(hostile, text)
    assert resp.status == status, resp.body
    if status == 202:
        rows = stored(hostile, [resp.json()["id"]], "the event")
        assert rows[resp.json()["id"]][1] in FINAL
    ordinary_events_flow(hostile)


@hsettings(max_examples=examples(150), **HYPO)
@given(bodies=rounds(), data=st.data())
def test_every_202_ends_in_events_and_the_pipeline_keeps_flowing(hostile, bodies, data):
    hostile.revive()
    for n, body in enumerate(bodies):
        note(f"body {n} ({len(body.text)} bytes): {shown(body.text)}")
    sent = [(body, receipt) for body in bodies if (receipt := send(hostile, body)) is not None]
    if sent:
        rows = stored(hostile, [r for _, r in sent], "the first round's receipts in events")
        check_rows(rows, sent)
        for body, receipt in sent:
            if rows[receipt][4] == [receipt]:  # the row is this body's alone (not an earlier example's too)
                assert payload_is(hostile, rows[receipt][0], body.text), body.text[:300]

        # Later batches: some of them again, as the same bytes and re-spelled.
        again = data.draw(st.lists(st.sampled_from(sent), min_size=1, max_size=3, unique_by=lambda s: s[1]),
                          label="again")
        rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
        resent = []
        for body, receipt in again:
            for copy in (Body(body.tree, body.text), respelled(body, rng, new_sent=rng.random() < 0.5)):
                note(f"again ({len(copy.text)} bytes): {shown(copy.text)}")
                if (new := send(hostile, copy)) is not None:
                    resent.append((copy, new, receipt))
        rows2 = stored(hostile, [r for _, r, _ in resent], "the re-deliveries' receipts in events")
        for copy, new, original in resent:
            event_id, status, *_ = rows[original]
            assert rows2[new][0] == event_id, (
                f"a re-delivery of the same event is another row: first {body_text(sent, original)!r},"
                f" again {copy.text[:400]!r}")
            assert rows2[new][1] == status
        check_rows({**rows, **{n: rows2[n] for _, n, _ in resent}},
                   sent + [(copy, new) for copy, new, _ in resent])
        for _, new, original in resent:
            _, _, _, deliveries, receipt_ids = rows2[new]
            assert original in receipt_ids and new in receipt_ids
            assert deliveries == len(receipt_ids)
            first = next(b for b, r in sent if r == original)
            if rows[original][4] == [original]:
                assert payload_is(hostile, rows2[new][0], first.text), "payload is not the first receipt's"
    ordinary_events_flow(hostile)


def catalogue() -> list[Body]:
    """Every datetime, number and string of the pools in a known event, and each name."""
    out = []
    for n, text in enumerate(SPECIAL_DATETIMES):
        for name in ("operator.login", "conversation.end"):
            params = {"operator_id": 9_090_000 + n} if name == "operator.login" else {
                "conversation_id": 9_090_000 + n, "type": "chat", "operator_id": 9_090_000 + n, "website_id": 1,
                "group_id": 1}
            out.append(node({"name": name, "datetime": {"created": text, "sent": text}, "parameters": params}))
    stamp = {"created": "2025-10-26 02:30:00", "sent": "2025-03-30 02:30:00"}
    for text in NUMBERS_STORABLE:
        out.append(node({"name": "operator.logout", "datetime": stamp, "parameters": {"operator_id": Num(text)}}))
        out.append(node({"name": "conversation.start", "datetime": stamp, "parameters": {
            "conversation_id": 9_091_000, "type": "video", "operator_id": 9_091_000, "website_id": Num(text),
            "group_id": 1, "custom_data": {"n": Num(text), "list": [Num(text)]}}}))
    for text in STRINGS:
        out.append(node({"name": "conversation.start", "datetime": stamp, "parameters": {
            "conversation_id": 9_092_000, "type": text, "operator_id": 9_092_000, "website_id": 1, "group_id": 1,
            "custom_data": {text: text}}}))
    for name in NAMES:
        out.append(node({"name": name, "datetime": stamp, "parameters": {"operator_id": 9_093_000}}))
    # Sessions and conversations that span the whole calendar.
    span = {"conversation_id": 9_095_000, "type": "call", "operator_id": 9_095_000, "website_id": 1, "group_id": 1}
    for name, when in [("operator.login", "0001-01-02 00:00:00"), ("operator.logout", "9999-12-31 23:59:59"),
                       ("conversation.start", "0001-01-02T00:00:00-14:00"),
                       ("conversation.end", "9999-12-31T23:59:59+14:00")]:
        out.append(node({"name": name, "datetime": {"created": when, "sent": when}, "parameters": span}))
    return [Body(tree, write(tree).encode()) for tree in out]


def test_a_catalogue_of_hostile_values_ends_in_events(hostile):
    """Each value of the pools once, deterministically, in one stream; every failure listed."""
    problems, sent = [], []
    for body in catalogue():
        try:
            if (receipt := send(hostile, body)) is not None:
                sent.append((body, receipt))
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    rows, dead = account(hostile, [r for _, r in sent], "the catalogue in events or dead letters")
    problems += [f"202 then dead letter, not in events: {body.text!r}: {dead[r].decode()[:300]}"
                 for body, r in sent if r in dead]
    check_rows(rows, [(body, r) for body, r in sent if r not in dead])
    ordinary_events_flow(hostile)
    assert not problems, "\n".join(p[:700] for p in problems)


@pytest.mark.parametrize("first, again", [
    ("1e400", "1E+400"),
    ("1e-400", "0.1e-399"),
    ("5", "5.0"),
    ("0.1", "1e-1"),
    (BIG, "1E+5000"),
    ("9007199254740993", "9007199254740993.0"),
    ("100000000000000000001", "1.00000000000000000001e20"),
])
def test_a_number_spelled_otherwise_is_the_same_event(hostile, first, again):
    """CONTRACT 4: equal parameters as JSON values are one event, however the numbers are spelled."""
    def body(number: str) -> bytes:
        return ('{"name": "conversation.start", "datetime": {"created": "2025-10-26 02:30:00",'
                ' "sent": "2025-10-26 02:30:00"}, "parameters": {"conversation_id": 9094000, "type": "chat",'
                ' "operator_id": 9094000, "website_id": 1, "group_id": 1, "custom_data": {"n": ' + number
                + ', "run": "' + RUN_ID + first[:30] + '"}}}').encode()

    receipts = []
    for number in (first, again):
        resp = push(hostile, body(number))
        assert resp.status == 202, resp.body
        receipts.append(resp.json()["id"])
        stored(hostile, receipts[-1:], "the event")
    rows = stored(hostile, receipts, "both receipts")
    assert rows[receipts[0]][0] == rows[receipts[1]][0], f"{first[:40]} and {again[:40]} made two rows"
    assert rows[receipts[1]][3] == 2


def shown(text: bytes) -> str:
    """A body for a report: whole when short, else its ends."""
    return repr(text) if len(text) <= 1200 else f"{text[:600]!r} ... {text[-300:]!r}"


def body_text(sent, receipt) -> bytes:
    return next(b.text for b, r in sent if r == receipt)[:400]


# Webhooks (CONTRACT 7) arrive at the same URL: a body with a string `eventType`
# is accepted like one with a string `name`, and ends in `events` too.
WEBHOOK_TYPES = ["v2.conversation.pushed", "v2.conversation.closed", "user.connected", "user.disconnected",
                 "user.availability.updated", "satisfaction.answered", "visitor.updated", "conversation.started",
                 "user.created", "", "😀"]


@st.composite
def webhook_bodies(draw) -> Body:
    pairs = [("eventType", Str(draw(st.sampled_from(WEBHOOK_TYPES))))]
    pairs.append(("eventId", draw(st.uuids().map(lambda u: Str(str(u))) | values())))
    for field in ("createdAt", "sentAt"):
        pairs.append((field, draw(st.builds(Str, datetime_texts()) | values())))
    for field, strategy in [("clientId", ids()), ("projectId", ids()), ("userId", ids()), ("operatorId", ids()),
                            ("conversationId", st.uuids().map(lambda u: Str(str(u))) | values()),
                            ("channel", st.sampled_from(["CHAT", "CALL", "WHATSAPP", ""]).map(Str) | values()),
                            ("operatorIds", st.lists(ids(), max_size=3).map(lambda v: Arr(tuple(v))) | values()),
                            ("customerSatisfaction", ids()), ("netPromoterScore", ids())]:
        if draw(st.booleans()):
            pairs.append((field, draw(strategy)))
    tree = Obj(tuple(pairs))
    return Body(tree, write(tree).encode())


DOC_WEBHOOK = (b'{"eventId": "6f0c2a4e-8d0b-4f0e-9a51-2c7de1f0b001", "eventType": "v2.conversation.pushed",'
               b' "platform": "ha", "projectId": 12, "clientId": 340,'
               b' "conversationId": "a3b1c9d0-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "operatorId": 4411,'
               b' "visitorExternalId": "70431123", "channel": "CHAT",'
               b' "visitorId": "c0ffee00-1234-4cde-8f00-aa11bb22cc33",'
               b' "createdAt": "2024-03-05T09:12:44.120Z", "sentAt": "2024-03-05T09:12:44.410Z"}')


# Webhooks (CONTRACT 7) share the URL: hostile ones are accepted or refused by the
# same edge rules and every 202 ends in events with a final status.
@hsettings(max_examples=examples(10), phases=(Phase.explicit, Phase.reuse, Phase.generate), **HYPO)
@given(body=webhook_bodies())
@example(body=Body(Obj(()), DOC_WEBHOOK))  # iAdvize's own example (webhooks-facts.md)
def test_webhook_bodies_are_accepted_and_end_in_events(hostile, body):
    hostile.revive()
    note(f"body: {shown(body.text)}")
    resp = push(hostile, body.text)
    ok = depth(body.tree) <= MAX_DEPTH and pg_stores(hostile, body.text)
    assert resp.status == (202 if ok else 400), (resp.status, resp.body, body.text[:400])
    if resp.status == 202:
        rows = stored(hostile, [resp.json()["id"]], "the webhook in events")
        assert rows[resp.json()["id"]][1] in FINAL
    ordinary_events_flow(hostile)


def test_the_worker_never_died(hostile):
    """Last: the worker log holds no drain loop that died, no exit; the worker is up."""
    ordinary_events_flow(hostile)
    text = hostile.worker_log()
    assert len(hostile.workers) == 1, "a worker died during the examples and was restarted"
    assert hostile.worker.popen.poll() is None
    for words in ("dispatcher died", "worker exits", "Unrecoverable error"):
        assert words not in text, worker_lines(hostile, [])
