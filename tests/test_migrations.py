"""Migrations that move data: a database at the schema before, with rows in it,
comes out with the rows the code after would have written."""

from __future__ import annotations

import datetime as dt

import psycopg2
import pytest
from yoyo import get_backend, read_migrations

from pushline.db import MIGRATIONS
from tests.conftest import RUN_ID


@pytest.fixture
def scratch(servers):
    base = servers[0].rsplit("/", 1)[0]
    name = f"pushline_migrations_{RUN_ID}"
    admin = psycopg2.connect(base + "/postgres", connect_timeout=5)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


def _apply(url: str, before: str | None = None) -> None:
    backend = get_backend(url)
    migrations = read_migrations(str(MIGRATIONS))
    if before:
        migrations = migrations.__class__([m for m in migrations if m.id < before], migrations.post_apply)
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))
    backend.connection.close()


def T(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_0022_keeps_the_event_ids_the_merge_compares(scratch):
    # Ties on createdAt everywhere: the eventId (byte order) breaks them.
    _apply(scratch, before="0022")
    conn = psycopg2.connect(scratch, options="-c TimeZone=UTC")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("""
                INSERT INTO webhook_conversation_events (event_uuid, event_id, conversation_id, kind, at, client_id,
                                                         project_id, channel, visitor_id, operator_id, operator_ids)
                VALUES ('b', 1, 'c1', 'pushed', '2024-01-01 10:00Z', 1, 2, 'CHAT', 'v', 7, NULL),
                       ('a', 2, 'c1', 'pushed', '2024-01-01 10:00Z', 1, 2, 'CHAT', 'v', 8, NULL),
                       ('Z', 3, 'c1', 'pushed', '2024-01-01 11:00Z', 1, 2, 'CHAT', 'v', 9, NULL),
                       ('y', 4, 'c1', 'closed', '2024-01-01 12:00Z', 1, 2, 'CHAT', 'v', NULL, '{7,9}'),
                       ('x', 5, 'c1', 'closed', '2024-01-01 12:00Z', 1, 2, 'CHAT', 'v', NULL, '{7}'),
                       ('q', 6, 'c2', 'closed', '2024-01-01 12:00Z', 1, 2, 'SMS', NULL, NULL, '{1}');
                INSERT INTO conversations_v2 (conversation_id, client_id, project_id, channel, visitor_id, operator_id,
                                              last_operator_id, operator_ids, assignments, started_at, ended_at)
                VALUES ('c1', 1, 2, 'CHAT', 'v', 8, 9, '{7,9}', 3, '2024-01-01 10:00Z', '2024-01-01 12:00Z'),
                       ('c2', 1, 2, 'SMS', NULL, NULL, NULL, '{1}', 0, NULL, '2024-01-01 12:00Z');
                INSERT INTO satisfaction_events (event_uuid, event_id, conversation_id, at, customer_satisfaction,
                                                 net_promoter_score, satisfaction_comment)
                VALUES ('s1', 7, 'c1', '2024-01-01 13:00Z', 4, NULL, NULL),
                       ('s2', 8, 'c1', '2024-01-01 13:00Z', 5, NULL, NULL),
                       ('s3', 9, 'c1', '2024-01-01 12:59Z', NULL, 9, 'hi'),
                       ('s4', 10, 'c1', '2024-01-01 12:58Z', NULL, 3, NULL);
                INSERT INTO satisfaction VALUES ('c1', 5, '2024-01-01 13:00Z', 9, '2024-01-01 12:59Z', 'hi',
                                                 '2024-01-01 12:59Z');
                INSERT INTO webhook_locks VALUES ('conversation', 'c1'), ('user', '5');
            """)
        _apply(scratch)
        with conn, conn.cursor() as cur:
            cur.execute("""SELECT conversation_id, first_event, last_assigned_at, last_assigned_event, closed_event
                           FROM conversations_v2 ORDER BY 1""")
            assert cur.fetchall() == [("c1", "a", T("2024-01-01T11:00:00+00:00"), "Z", "y"),
                                      ("c2", None, None, None, "q")]
            cur.execute("""SELECT customer_satisfaction_event, net_promoter_score_event, satisfaction_comment_event
                           FROM satisfaction""")
            assert cur.fetchall() == [("s2", "s3", "s3")]
            cur.execute("SELECT conversation_id, event_uuid FROM conversation_event_ids ORDER BY 1, 2")
            assert cur.fetchall() == [("c1", "s1"), ("c1", "s2"), ("c1", "s3"), ("c1", "s4"), ("c1", "x"), ("c1", "y"),
                                      ("c2", "q")]
            cur.execute("SELECT kind, key FROM webhook_locks")
            assert cur.fetchall() == [("user", "5")]
            cur.execute("SELECT to_regclass('webhook_conversation_events'), to_regclass('satisfaction_events')")
            assert cur.fetchone() == (None, None)
    finally:
        conn.close()
