"""EXPLAIN the queries that matter on 1,000,000 events: `python -m bench.explain`.

Builds a throwaway database `pushline_explain` on the bench servers (embedded
if DATABASE_URL is unset), fills it with SQL, and writes docs/indexes.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg2

from pushline import devstack
from pushline.db import migrate

ROOT = Path(__file__).resolve().parent.parent

FILL = """
INSERT INTO events (event_key, source, name, created_at, sent_at, received_at, deliveries, receipt_ids, payload,
                    status, error)
SELECT md5(i::text)::uuid, 'default',
       (ARRAY['operator.login','conversation.start','conversation.end','operator.logout'])[1 + i %% 4],
       t, t, t, 1, ARRAY[md5(i::text)], jsonb_build_object('n', i),
       CASE WHEN i %% 1000 = 0 THEN 'rejected' ELSE 'processed' END,
       CASE WHEN i %% 1000 = 0 THEN 'parameters.type: Must be one of: chat, call, video.' END
FROM generate_series(1, %(n)s) i, LATERAL (SELECT '2026-01-01'::timestamptz + i * interval '31 seconds') x(t);
INSERT INTO conversations (conversation_id, type, operator_id, website_id, group_id, started_at, ended_at,
                           attrs_from, attrs_created_at, attrs_event_key)
SELECT i, 'chat', i %% 500, i %% 20, i %% 7, '2026-01-01'::timestamptz + i * interval '2 minutes',
       '2026-01-01'::timestamptz + i * interval '2 minutes' + interval '9 minutes', 'start', now(), md5(i::text)::uuid
FROM generate_series(1, %(n)s / 4) i;
INSERT INTO operator_sessions (operator_id, login_at, logout_at)
SELECT i %% 500, '2026-01-01'::timestamptz + i * interval '2 minutes',
       '2026-01-01'::timestamptz + i * interval '2 minutes' + interval '3 hours'
FROM generate_series(1, %(n)s / 4) i;
INSERT INTO operator_events (event_id, operator_id, at, kind)
SELECT i, i %% 500, '2026-01-01'::timestamptz + i * interval '1 minute',
       CASE WHEN i %% 2 = 0 THEN 'login' ELSE 'logout' END
FROM generate_series(1, %(n)s / 2) i;
ANALYZE;
"""

QUERIES = [
    ("A worker finds events stored before (redeliveries), by key: the unique index",
     "SELECT id FROM events WHERE event_key = ANY(ARRAY[md5('4242')::uuid, md5('99')::uuid])"),
    ("A worker locks those rows by id: events_id",
     "SELECT id FROM events WHERE id = ANY(ARRAY[4242, 99]) ORDER BY id FOR NO KEY UPDATE"),
    ("`replay` pages through rejected/unhandled events: the partial index events_not_processed",
     "SELECT id FROM events WHERE id > 0 AND status = ANY('{rejected,unhandled}') ORDER BY id LIMIT 500"),
    ("`replay --since/--until` and retention: partition pruning, then events_created_at",
     "SELECT count(*) FROM events WHERE created_at >= '2026-03-10' AND created_at < '2026-03-11'"),
    ("The status page's last minute: events_received_at",
     "SELECT count(*) FROM events WHERE received_at > '2026-12-01'::timestamptz - interval '1 minute'"),
    ("Session pairing: last login before the new events (operator_sessions_login)",
     "SELECT max(login_at) FROM operator_sessions WHERE operator_id = 42 AND login_at < '2026-06-01'"),
    ("Session pairing: the operator's events in the window (operator_events_operator_at)",
     "SELECT at, kind FROM operator_events WHERE operator_id = 42 AND at >= '2026-06-01' ORDER BY at"),
    ("An analyst's day of conversations (conversations_started_at)",
     "SELECT count(*) FROM conversations WHERE started_at >= '2026-03-10' AND started_at < '2026-03-11'"),
]


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    env = dict(os.environ)
    embedded = devstack.bootstrap(env)
    base = env["DATABASE_URL"].rsplit("/", 1)[0]
    admin = psycopg2.connect(base + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS pushline_explain")
        cur.execute("CREATE DATABASE pushline_explain")
    url = base + "/pushline_explain"
    try:
        migrate(url, "UTC")
        conn = psycopg2.connect(url)
        conn.autocommit = True
        out = ["# Indexes, justified by EXPLAIN", "",
               f"`python -m bench.explain` fills a throwaway database with {n:,} events (a year of monthly",
               "partitions beside events_before and events_after),",
               f"{n // 4:,} conversations and sessions and {n // 2:,} operator events, then runs `EXPLAIN (ANALYZE)`",
               "on each query the workers, `replay`, retention, the status page and analysts depend on.", ""]
        with conn.cursor() as cur:
            cur.execute(FILL, {"n": n})
            for title, sql in QUERIES:
                cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + sql)
                plan = "\n".join(r[0] for r in cur.fetchall())
                out += [f"## {title}", "", "```sql", sql, "```", "", "```", plan, "```", ""]
        conn.close()
        out += ["## Notes", "",
                "- Every query above is an index or index-only scan; retention and time-range replays also prune",
                "  partitions. Lookups by `event_key` alone probe each month's unique index (one probe per",
                "  partition), which only happens for events already stored (redeliveries).",
                "- `events_not_processed` is partial: a processed event, nearly all of them, costs it nothing.",
                "- The daily views aggregate whole tables; filter `conversations.started_at` directly for one day.",
                ""]
        (ROOT / "docs" / "indexes.md").write_text("\n".join(out))
        print("written: docs/indexes.md")
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'pushline_explain'")
            cur.execute("DROP DATABASE IF EXISTS pushline_explain")
        admin.close()
        embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
