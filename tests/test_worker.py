"""The worker's drain loop against the real queue and database (no processes)."""

from __future__ import annotations

import json

import pytest

from pushline.queue import EventQueue
from tests.conftest import query
from tests.helpers import conversation, drain, enqueue, login, logout
from tests.test_schemas import fixture
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers
from workers.registry import Registry


@pytest.fixture
def loop(settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="test")
    yield loop
    loop.close()


@pytest.fixture
def queue(loop):
    return loop.queue


def events(db):
    return query(db, "SELECT name, status, error, deliveries, source FROM events ORDER BY id")


def test_seed_examples_become_rows(loop, queue, db):
    enqueue(queue, *(fixture(n) for n in ("operator.login", "operator.logout", "conversation.start",
                                          "conversation.end")))
    assert drain(loop) == 4
    assert sorted((n, s) for n, s, *_ in events(db)) == [
        ("conversation.end", "processed"), ("conversation.start", "processed"),
        ("operator.login", "processed"), ("operator.logout", "processed"),
    ]
    [conv] = query(db, "SELECT conversation_id, type, operator_id, website_id, group_id, custom_data,"
                       " started_at::text, ended_at::text, duration_seconds FROM conversations")
    assert conv == (1, "chat", 1, 1, 1, {"example": "value"}, "2014-01-01 00:00:00+00", "2014-01-01 00:00:00+00", 0)
    assert query(db, "SELECT operator_id, login_at::text, logout_at::text, duration_seconds FROM operator_sessions") \
        == [(1, "2014-01-01 00:00:00+00", "2014-01-01 00:00:00+00", 0)]


def test_seed_start_as_printed_is_rejected_naming_type(loop, queue, db):
    enqueue(queue, fixture("conversation.start.as-printed"))
    drain(loop)
    [(name, status, error, _, _)] = events(db)
    assert (name, status) == ("conversation.start", "rejected")
    assert error == "parameters.type: Must be one of: chat, call, video."
    assert query(db, "SELECT count(*) FROM conversations") == [(0,)]


def test_unknown_name_is_kept_unhandled(loop, queue, db):
    enqueue(queue, {"name": "visitor.chat", "datetime": {"created": "2014-01-01 00:00:00"}, "parameters": {"x": 1}})
    drain(loop)
    [(name, status, error, _, _)] = events(db)
    assert (name, status) == ("visitor.chat", "unhandled")
    [(payload, created)] = query(db, "SELECT payload, created_at::text FROM events")
    assert payload["parameters"] == {"x": 1}
    assert created == "2014-01-01 00:00:00+00"


def test_same_event_twice_with_other_sent_is_one_row_applied_once(loop, queue, db):
    first = conversation("end", 7, "2014-01-01 10:00:00", sent="2014-01-01 10:00:01")
    again = conversation("end", 7, "2014-01-01 10:00:00", sent="2014-01-01 10:00:09")
    enqueue(queue, first)
    drain(loop)
    enqueue(queue, again)
    drain(loop)
    [(_, status, _, deliveries, _)] = events(db)
    assert (status, deliveries) == ("processed", 2)
    [(payload,)] = query(db, "SELECT payload FROM events")
    assert payload["datetime"]["sent"] == "2014-01-01 10:00:01"  # as first received
    assert query(db, "SELECT count(*) FROM conversations") == [(1,)]


def test_duplicates_in_one_batch_count_every_receipt(loop, queue, db):
    body = login(3, "2014-01-01 08:00:00")
    enqueue(queue, body, body, {**body, "datetime": {**body["datetime"], "sent": "2015-01-01 00:00:00"}})
    drain(loop)
    assert [d for *_, d, _ in events(db)] == [3]
    assert query(db, "SELECT count(*) FROM operator_sessions") == [(1,)]


def test_redelivered_queue_item_is_counted_once(loop, queue, db, rq):
    """A worker that dies after commit but before ack: the item comes back; nothing doubles."""
    enqueue(queue, login(4, "2014-01-01 08:00:00"))
    batch = queue.claim(10)
    assert loop.process(batch) == "stored"  # committed and acked
    # Put the very same item back, as a reclaim after a lost ack would.
    rq.rpush(queue.incoming, *batch.items)
    drain(loop)
    assert query(db, "SELECT deliveries, receipt_ids FROM events") == [(1, [batch_receipt(batch)])]


def batch_receipt(batch) -> str:
    from pushline.envelope import Envelope

    return Envelope.decode(batch.items[0]).receipt_id


def test_receipt_ids_with_quotes_and_backslashes_survive(loop, queue, db):
    from pushline.envelope import Envelope

    body = json.dumps(login(6, "2014-01-01 08:00:00")).encode()
    for rid in ('we"ird', "back\\slash"):
        queue.push(Envelope(rid, "default", 1.0, body).encode(), 10**6)
    drain(loop)
    [(deliveries, receipts)] = query(db, "SELECT deliveries, receipt_ids FROM events")
    assert (deliveries, sorted(receipts)) == (2, sorted(['we"ird', "back\\slash"]))


def test_source_of_the_token_is_stored(loop, queue, db):
    enqueue(queue, login(5, "2014-01-01 08:00:00"), source="paris")
    drain(loop)
    assert [s for *_, s in events(db)] == ["paris"]


def test_unknown_fields_are_kept_in_payload_and_ignored(loop, queue, db):
    body = conversation("start", 9, "2014-01-01 08:00:00", visitor={"lang": "fr"})
    body["extra"] = True
    enqueue(queue, body)
    drain(loop)
    [(status, payload)] = query(db, "SELECT status, payload FROM events")
    assert status == "processed"
    assert payload["parameters"]["visitor"] == {"lang": "fr"} and payload["extra"] is True


def test_poison_event_is_rejected_and_the_rest_of_its_batch_is_processed(settings, db, rq):
    registry = Registry()
    from workers.handlers import conversations, operators

    registry.handles("operator.login", "operator.logout")(operators.apply)

    @registry.handles("conversation.start", "conversation.end")
    def explode_on_13(cur, events):
        if any(e.event.parameters["conversation_id"] == 13 for e in events):
            raise RuntimeError("boom on 13")
        conversations.apply(cur, events)

    loop = Consumer(settings, registry, name="poison")
    enqueue(loop.queue, conversation("start", 12, "2014-01-01 08:00:00"),
            conversation("start", 13, "2014-01-01 08:00:00"), login(1, "2014-01-01 08:00:00"))
    drain(loop)
    loop.close()
    rows = dict(((json.loads(json.dumps(p))["parameters"].get("conversation_id"), s), e) for p, s, e in
                query(db, "SELECT payload, status, error FROM events"))
    assert set(rows) == {(12, "processed"), (13, "rejected"), (None, "processed")}
    assert "boom on 13" in rows[(13, "rejected")]
    assert query(db, "SELECT conversation_id FROM conversations") == [(12,)]
    assert EventQueue(rq, settings.queue_prefix).depth() == 0


def test_invalid_event_does_not_block_valid_ones_in_its_batch(loop, queue, db):
    enqueue(queue, conversation("start", 20, "2014-01-01 08:00:00", type_="fax"),
            conversation("start", 21, "2014-01-01 08:00:00"), logout(2, "not a date"))
    drain(loop)
    statuses = sorted((s, e or "") for _, s, e, _, _ in events(db))
    assert statuses[0] == ("processed", "")
    assert statuses[1][0] == "rejected" and "datetime.created" in statuses[1][1]
    assert statuses[2][0] == "rejected" and "parameters.type" in statuses[2][1]


def test_spooled_events_reach_the_queue_and_the_tables(loop, db):
    from pushline.db import BoundedSession
    from pushline.envelope import Envelope
    from pushline.spool import spool

    conn = BoundedSession(loop.settings.database_url, "test-spool")
    for i, body in enumerate([login(8, "2014-01-01 08:00:00"), logout(8, "2014-01-01 09:00:00")]):
        spool(conn, Envelope(f"spooled-{i}", "default", 1.0, json.dumps(body).encode()).encode())
    conn.close()
    from workers import housekeeping

    assert housekeeping.forward_spool(loop.conn, loop.queue) == 2  # beat's forward_spool task
    drain(loop)
    assert query(db, "SELECT count(*) FROM spool") == [(0,)]
    assert query(db, "SELECT operator_id, duration_seconds FROM operator_sessions") == [(8, 3600.0)]
    assert sorted(r[0] for r in query(db, "SELECT unnest(receipt_ids) FROM events")) == ["spooled-0", "spooled-1"]


def test_a_dead_workers_events_are_processed_one_by_one_and_a_repeat_killer_is_rejected(loop, queue, db):
    """Simulates workers that die holding a batch (leases that expire unacknowledged)."""
    import time as _time

    from pushline.queue import STRIKE_LIMIT

    enqueue(queue, login(30, "2014-01-01 08:00:00"), logout(30, "2014-01-01 09:00:00"))
    assert queue.start(queue.claim(10).id)  # a task began it...
    queue.reclaim(now=_time.time() + 3600)  # ... and its worker died: both become suspects
    assert drain(loop) == 2  # one at a time
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 2)]
    assert queue.redis.hlen(queue.strikes) == 0

    enqueue(queue, conversation("start", 31, "2014-01-01 08:00:00"))
    assert queue.start(queue.claim(10).id)
    for _ in range(STRIKE_LIMIT - 1):
        queue.reclaim(now=_time.time() + 3600)
        assert queue.start(queue.claim_one(queue.suspect)[1].id)  # ... and each next worker dies on it too
    queue.reclaim(now=_time.time() + 3600)
    drain(loop)
    [(status, error)] = query(db, "SELECT status, error FROM events WHERE name = 'conversation.start'")
    assert status == "rejected" and "workers died or failed while processing this event" in error
    assert query(db, "SELECT count(*) FROM conversations") == [(0,)]  # its handler never ran


def test_a_duty_is_overdue_after_six_periods_since_its_last_run_or_the_dispatchers_start(queue):
    from pushline.workerstats import WorkerStats
    from workers import housekeeping

    queue.redis.delete(WorkerStats(queue.redis, queue.prefix).housekeeping)
    now = 1_000_000.0
    # Never run: counted from the start, so beat starting after the workers is no missing beat.
    assert housekeeping.overdue(queue, since=now - 5, now=now) == []
    assert housekeeping.overdue(queue, since=now - 29, now=now) == ["forward_spool"]
    assert housekeeping.overdue(queue, since=now - 31, now=now) == ["sweep_leases", "forward_spool"]
    assert housekeeping.overdue(queue, since=now - 3601, now=now) == ["sweep_leases", "forward_spool",
                                                                        "roll_partitions"]
    queue.redis.hset(WorkerStats(queue.redis, queue.prefix).housekeeping, "sweep_leases", now - 10)
    assert housekeeping.overdue(queue, since=now - 3601, now=now) == ["forward_spool", "roll_partitions"]


def test_retention_deletes_what_is_older_than_its_days_and_is_off_at_zero(loop, db):
    import datetime as dt

    from tests.conftest import make_settings
    from workers import housekeeping
    from workers.celery_app import beat_schedule

    recent = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    enqueue(loop.queue, login(40, "2014-01-01 08:00:00"), login(41, recent))
    drain(loop)
    assert housekeeping.apply_retention(loop.conn, 0, loop.queue) is None  # off
    assert query(db, "SELECT count(*) FROM events") == [(2,)]
    assert housekeeping.apply_retention(loop.conn, 30, loop.queue) == 1
    assert query(db, "SELECT payload->'parameters'->>'operator_id' FROM events") == [("41",)]
    # Beat sends it hourly with its own setting, and not at all when it is 0.
    settings = loop.settings
    assert "apply-retention" not in beat_schedule(settings)
    on = beat_schedule(make_settings(settings.database_url, settings.redis_url, PUSHLINE_RETENTION_DAYS="30"))
    assert on["apply-retention"]["kwargs"] == {"days": 30} and on["apply-retention"]["schedule"] == 3600


def test_a_webhook_is_its_event_id_even_when_a_retry_says_another_created_at(loop, db):
    """CONTRACT 7: the same eventId is one event, one row, deliveries counting receipts."""
    from tests.helpers import pushed

    first = pushed("c-retry", 7, "2024-03-05T09:00:00Z", event_id="11111111-2222-4333-8444-555555555555")
    later = {**first, "createdAt": "2024-04-05T09:05:00Z", "sentAt": "2024-04-05T09:05:01Z"}  # another month
    enqueue(loop.queue, first)
    drain(loop)
    enqueue(loop.queue, later)  # a later batch
    drain(loop)
    enqueue(loop.queue, later, first)  # both again, in one batch
    drain(loop)
    assert query(db, "SELECT deliveries, created_at::text FROM events") == [(4, "2024-03-05 09:00:00+00")]
    assert query(db, "SELECT started_at::text, assignments FROM conversations_v2") == [("2024-03-05 09:00:00+00", 1)]
