"""The batched baseline: what a good engineer would build first, before Pushline's design.

One Celery task per batch of bodies (the bench sends 500 a task), each body loaded
with the same marshmallow schemas as the textbook pipeline, then written in one
transaction with execute_values: the events insert (ON CONFLICT DO NOTHING) and the
conversations upsert, the same SQL as bench/textbook.py, one statement per table.
Operator sessions are left out as the textbook leaves them out, so that both
baselines do the same work per event.
"""

from __future__ import annotations

import json
import os
import uuid

import psycopg2
import redis
from celery import Celery, signals
from psycopg2.extras import Json, execute_values

from pushline.identity import event_key
from schemas import EVENT_SCHEMAS, load_event

PREFIX = "pushline-bench-textbook-batch"
# Written after each commit: the bench reads progress here, since a count(*) on
# events every few ms would load PostgreSQL beside the workers it times.
DONE_KEY = f"{PREFIX}:done"
READY_KEY = f"{PREFIX}:ready"  # set once the worker consumes: the bench starts its clock then

app = Celery("textbook_batch", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
# A task is long (hundreds of events): one prefetched at a time, acknowledged after its commit.
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                worker_hijack_root_logger=False,
                broker_transport_options={"global_keyprefix": f"{PREFIX}:"})
_conn = None
_redis = None


def progress() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _redis


def conn():
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(os.environ["DATABASE_URL"])
    return _conn


@signals.worker_ready.connect
def _ready(**kwargs):
    progress().set(READY_KEY, 1)


@app.task(name="textbook_batch.store_batch")
def store_batch(body_texts: list[str]) -> None:
    events, conversations = [], {}
    for text in body_texts:
        body = json.loads(text)
        event = load_event(EVENT_SCHEMAS[body["name"]], body)
        key = event_key(body)
        events.append((key, event.name, event.created, event.sent, Json(body), uuid.uuid4().hex))
        if event.name.startswith("conversation."):
            p = event.parameters
            started = event.created if event.name.endswith("start") else None
            ended = event.created if event.name.endswith("end") else None
            seen = conversations.get(p["conversation_id"])
            if seen is None:
                conversations[p["conversation_id"]] = [p["conversation_id"], p["type"], p["operator_id"],
                                                       p["website_id"], p["group_id"], started, ended,
                                                       event.created, key]
            else:
                # One upsert statement cannot update a row twice: merge a batch's events
                # per conversation as the per-event upserts would (first one's attributes).
                seen[5] = min(filter(None, (seen[5], started)), default=None)
                seen[6] = max(filter(None, (seen[6], ended)), default=None)
    c = conn()
    with c, c.cursor() as cur:
        execute_values(cur, """INSERT INTO events (event_key, source, name, created_at, sent_at, received_at,
                                                   payload, status, receipt_ids)
                               VALUES %s ON CONFLICT (event_key, created_at) DO NOTHING""",
                       events, template="(%s, 'default', %s, %s, %s, now(), %s, 'processed', ARRAY[%s])",
                       page_size=len(events) or 1)
        if conversations:
            # In key order, so that two processes lock shared conversations in the same order.
            rows = [conversations[k] for k in sorted(conversations)]
            execute_values(cur, """INSERT INTO conversations AS c (conversation_id, type, operator_id, website_id,
                                       group_id, started_at, ended_at, attrs_from, attrs_created_at, attrs_event_key)
                                   VALUES %s
                                   ON CONFLICT (conversation_id) DO UPDATE SET
                                       started_at = least(c.started_at, excluded.started_at),
                                       ended_at = greatest(c.ended_at, excluded.ended_at)""",
                           rows, template="(%s, %s, %s, %s, %s, %s::timestamptz, %s::timestamptz, 'start', %s, %s)",
                           page_size=len(rows))
    progress().incrby(DONE_KEY, len(body_texts))
