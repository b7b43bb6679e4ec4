"""The textbook pipeline, as a baseline: one Celery task and one committed upsert per event."""

from __future__ import annotations

import json
import os
import uuid

import psycopg2
from celery import Celery
from psycopg2.extras import Json

from pushline.identity import event_key
from schemas import EVENT_SCHEMAS, load_event

app = Celery("textbook", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, worker_hijack_root_logger=False,
                broker_transport_options={"global_keyprefix": "pushline-bench-textbook:"})
_conn = None


def conn():
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(os.environ["DATABASE_URL"])
    return _conn


@app.task(name="textbook.store")
def store(body_text: str) -> None:
    body = json.loads(body_text)
    event = load_event(EVENT_SCHEMAS[body["name"]], body)
    c = conn()
    with c, c.cursor() as cur:
        key = event_key(body)
        cur.execute("""INSERT INTO events (event_key, source, name, created_at, sent_at, received_at, payload, status,
                                           receipt_ids)
                       VALUES (%s, 'default', %s, %s, %s, now(), %s, 'processed', ARRAY[%s])
                       ON CONFLICT (event_key, created_at) DO NOTHING""",
                    (key, event.name, event.created, event.sent, Json(body), uuid.uuid4().hex))
        p = event.parameters
        if event.name.startswith("conversation."):
            cur.execute("""INSERT INTO conversations AS c (conversation_id, type, operator_id, website_id, group_id,
                               started_at, ended_at, attrs_from, attrs_created_at, attrs_event_key)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, 'start', %s, %s)
                           ON CONFLICT (conversation_id) DO UPDATE SET
                               started_at = least(c.started_at, excluded.started_at),
                               ended_at = greatest(c.ended_at, excluded.ended_at)""",
                        (p["conversation_id"], p["type"], p["operator_id"], p["website_id"], p["group_id"],
                         event.created if event.name.endswith("start") else None,
                         event.created if event.name.endswith("end") else None, event.created, key))
