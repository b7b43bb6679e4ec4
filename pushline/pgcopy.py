"""Bulk writes with COPY: the fastest way to hand PostgreSQL many rows.

Rows are staged in temporary tables (ON COMMIT DELETE ROWS, made once per
connection) and merged with INSERT ... SELECT ... ON CONFLICT, which COPY
itself cannot do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg2.errors

from pushline.jsonvalues import dumps_exact
from pushline.pgarrays import array

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class RawJSON(str):
    """JSON text that is already valid: sent as is, not encoded again."""


_translate = operator.methodcaller("translate", _ESCAPES)


def _text(value: str) -> str:
    # str.translate looks every character up in a dict (about 7 ns each: 2 us for
    # a typical body); four C-speed scans prove most values need no escape at all.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return _translate(value)
    return value


def _array(values: list) -> str:
    if all(type(v) is str and v.isalnum() for v in values):  # receipt ids: nothing to quote or escape
        return "{" + ",".join(values) + "}"
    if all(isinstance(v, str) for v in values):  # text[]: the array literal, escaped for COPY
        return _text(array(values))
    return _json(values)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # once: json.dumps(**options) makes one per call


def _json(value: Any) -> str:
    try:
        return _text(_ENCODER.encode(value))
    except TypeError:  # exact numbers (Decimals) of a body holding 1e400 and the like
        return _text(dumps_exact(value, ensure_ascii=False, separators=(",", ":")))


# Dispatch on the exact type: the batch loop formats every value of every row.
_FORMAT = {
    type(None): lambda _: "\\N",
    str: _text,
    RawJSON: _text,
    int: repr,
    float: repr,
    bool: lambda v: "t" if v else "f",
    dt.datetime: dt.datetime.isoformat,
    list: _array,
    dict: _json,
}


def format_rows(rows: Iterable[Sequence[Any]]) -> str:
    """COPY's text format. The worker's hottest loop: one comprehension, no call per value but the formatter's."""
    fmt = _FORMAT
    try:
        return "".join(["\t".join([fmt[type(v)](v) for v in row]) + "\n" for row in rows])
    except KeyError as exc:
        raise TypeError(f"cannot COPY a {getattr(exc.args[0], '__name__', exc.args[0])}") from None


def copy_rows(cur, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(format_rows(rows)))


STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_events (
    event_key uuid, source text, name text, created_at timestamptz, sent_at timestamptz,
    received_at timestamptz, deliveries integer, receipt_ids text[], payload jsonb, status text, error text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_conversations (
    conversation_id bigint, type text, operator_id bigint, website_id bigint, group_id bigint, custom_data jsonb,
    started_at timestamptz, ended_at timestamptz, attrs_from text, attrs_created_at timestamptz,
    attrs_event_key uuid
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_operator_events (event_id bigint, operator_id bigint, at timestamptz, kind text)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_webhooks (
    part text, event_uuid text COLLATE "C", event_id bigint, conversation_id text, user_id bigint,
    at timestamptz, kind text, client_id bigint, project_id bigint, channel text, visitor_id text,
    operator_id bigint, operator_ids bigint[], status text, customer_satisfaction bigint,
    net_promoter_score integer, satisfaction_comment text
) ON COMMIT DELETE ROWS;
"""


def prepare_staging(conn) -> None:
    """Create the staging tables for the session, in a transaction of their own.

    Created inside a batch's transaction, a rollback would drop them again; so
    a worker makes them once, right after connecting, and `stage_rows` then
    skips the DDL (and the statement that empties a table it did not use yet
    in the transaction: four round trips a batch with both formats).

    Every ON COMMIT DELETE ROWS table of the session is truncated at each commit
    that touched a temporary table, used or not (a file truncation each): so the
    webhooks' four kinds of rows share one table, stage_webhooks, told apart by
    its `part` column (workers/handlers/webhooks.py)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET LOCAL client_min_messages = warning; {STAGING}")
        conn.commit()
    except BaseException:
        with contextlib.suppress(psycopg2.Error):  # a broken connection: its owner drops it
            conn.rollback()
        raise
    conn.staging_made = STAGING_TABLES


STAGING_TABLES = frozenset(("stage_events", "stage_conversations", "stage_operator_events", "stage_webhooks"))


def stage_rows(cur, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Fill staging table `table` with exactly these rows.

    The tables live per session and are emptied at commit (ON COMMIT DELETE
    ROWS). A transaction may stage a table several times (a rebuild's pages,
    a poison batch written event by event): it is emptied first then. On a
    session `prepare_staging` made them for (pushline.db.Session), that is all;
    on any other connection, they are created here on first use (a cheap no-op
    after) and emptied every time.
    """
    conn = cur.connection
    staged = getattr(conn, "staged", None)
    if staged is None or table not in conn.staging_made:
        cur.execute(f"SET LOCAL client_min_messages = warning; {STAGING}; DELETE FROM {table}")
        copy_rows(cur, table, columns, rows)
    else:
        try:
            if table in staged:
                cur.execute(f"DELETE FROM {table}")
            copy_rows(cur, table, columns, rows)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.InsufficientPrivilege) as exc:
            # Not the data's fault: the session is not the one that made them (a
            # pooler in transaction mode hands out server sessions per transaction).
            conn.staging_made = frozenset()
            raise StagingLost(f"the session's staging tables are gone: {exc}".strip()) from exc
    if staged is not None:
        staged.add(table)


class StagingLost(psycopg2.OperationalError):
    """The staging tables made for a session are not there (or not ours): the
    batch is retried (transient: no SQLSTATE) and the caller stops preparing them."""
