"""No input, no date and no hang stops the pipeline (CONTRACT 3 and 6), in process.

The real queue, database and drain loop; the process-level faults (pauses,
kills, maxmemory) are in test_faults.py, the generated end-to-end bodies in
test_hostile.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pushline.db import BoundedSession, Timeout
from pushline.envelope import Envelope
from pushline.workerstats import WorkerStats
from tests.conftest import ROOT, TOKEN, make_settings, query, settings_env
from tests.helpers import conversation, drain, enqueue, login, logout
from web import create_app
from workers.consumer import Consumer, LeaseKeeper
from workers.handlers import registry_with_handlers
from workers.registry import Registry


def registry_with(name: str, apply) -> Registry:
    """A copy of the handlers' registry with one handler's apply replaced (the shared one stays intact)."""
    copy = Registry()
    copy._handlers = dict(registry_with_handlers()._handlers)
    handler = copy._handlers[name]
    copy._handlers[name] = type(handler)(apply, handler.schema, handler.name)
    return copy


@pytest.fixture
def loop(settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="robust")
    yield loop
    loop.close()


@pytest.fixture
def queue(loop):
    return loop.queue


def execute(db, sql: str, *params) -> None:
    with db.cursor() as cur:
        cur.execute(sql, params)


def push_raw(queue, text: str) -> str:
    return enqueue(queue, text.encode())[0]


# -- numbers ---------------------------------------------------------------

def test_1e400_delivered_again_in_a_later_batch_is_one_event_with_two_receipts(loop, queue, db):
    first = push_raw(queue, '{"name": "x.y", "parameters": {"n": 1e400}}')
    drain(loop)
    # The same JSON value spelled otherwise is the same event; 2e400 is another one
    # (a float reading would make both Infinity: one event).
    second = push_raw(queue, '{"parameters": {"n": 1E+400}, "name": "x.y"}')
    other = push_raw(queue, '{"name": "x.y", "parameters": {"n": 2e400}}')
    drain(loop)
    rows = query(db, "SELECT receipt_ids, deliveries, status, payload->'parameters'->>'n' FROM events ORDER BY id")
    assert [(sorted(r), d, s) for r, d, s, _ in rows] == [
        (sorted([first, second]), 2, "unhandled"), ([other], 1, "unhandled")]
    assert rows[0][3] == "1" + "0" * 400 and rows[1][3] == "2" + "0" * 400
    # ... and the queue goes on
    enqueue(queue, login(1, "2014-01-01 08:00:00"))
    drain(loop)
    assert query(db, "SELECT count(*) FROM events WHERE status = 'processed'") == [(1,)]


def test_exact_numbers_in_custom_data_reach_the_conversation_row(loop, queue, db):
    body = json.dumps(conversation("start", 7, "2014-01-01 08:00:00", custom_data={"big": "X", "tiny": "Y"}))
    push_raw(queue, body.replace('"X"', "1e400").replace('"Y"', "-1e-400"))
    drain(loop)
    [(big, tiny)] = query(db, "SELECT custom_data->>'big', custom_data->>'tiny' FROM conversations")
    assert big == "1" + "0" * 400 and tiny == "-0." + "0" * 399 + "1"


def test_a_five_thousand_digit_integer_is_accepted_and_one_beyond_numeric_is_400(settings, rq, db):
    client = create_app(settings).test_client()
    big = '{"name": "x.y", "n": ' + "7" * 5000 + "}"
    assert client.post(f"/push/{TOKEN}", data=big, content_type="application/json").status_code == 202
    for body in ('{"name": "x.y", "n": 1e131072}', '{"name": "x.y", "n": -1e-16384}'):
        resp = client.post(f"/push/{TOKEN}", data=body, content_type="application/json")
        assert resp.status_code == 400 and "beyond the range" in resp.get_json()["error"]


# -- dates -----------------------------------------------------------------

def partitions(db) -> list[str]:
    return sorted(r[0] for r in query(db, "SELECT inhrelid::regclass::text FROM pg_inherits"
                                          " WHERE inhparent = 'events'::regclass"))


def test_a_negative_offset_at_a_month_end_lands_in_the_utc_month(loop, queue, db):
    # The last day of last month at 21:30 -03:00 is the 1st of this month, 00:30 UTC.
    today = time.gmtime()
    year, month = (today.tm_year, today.tm_mon - 1) if today.tm_mon > 1 else (today.tm_year - 1, 12)
    last_day = (31 if month in (1, 3, 5, 7, 8, 10, 12) else 30 if month != 2
                else 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28)
    created = f"{year:04d}-{month:02d}-{last_day:02d}T21:30:00-03:00"
    enqueue(queue, login(5, created), login(6, f"{today.tm_year:04d}-{today.tm_mon:02d}-01 00:10:00"))
    drain(loop)
    rows = query(db, "SELECT tableoid::regclass::text, status FROM events ORDER BY id")
    expected = f"events_{today.tm_year:04d}_{today.tm_mon:02d}"
    assert rows == [(expected, "processed"), (expected, "processed")]


def test_any_year_and_offset_is_stored_without_making_tables(loop, queue, db):
    before = partitions(db)
    stamps = ["0001-01-01T00:00:00-14:00", "0001-01-01 00:00:00", "9999-12-31T23:59:59+14:00",
              "9999-12-31 23:59:59", "1969-12-31T23:59:59-00:30", "2400-02-29T12:00:00+05:45",
              "4321-06-30T23:00:00-09:30", "0001-01-01T00:00:00+14:00", "9999-12-31T23:00:00-14:00"]
    enqueue(queue, *(login(100 + i, s) for i, s in enumerate(stamps)))
    drain(loop)
    assert partitions(db) == before  # absurd years live in events_before / events_after
    rows = dict(query(db, "SELECT payload->'datetime'->>'created', status FROM events"))
    assert set(rows) == set(stamps)
    # Instants that are not in years 1-9999 once in UTC are rejected, naming the field.
    out_of_range = {"0001-01-01T00:00:00+14:00", "9999-12-31T23:00:00-14:00"}
    assert {s for s, status in rows.items() if status == "rejected"} == out_of_range
    errors = [e for (e,) in query(db, "SELECT error FROM events WHERE status = 'rejected'")]
    assert all(e.startswith("datetime.created: Out of range") for e in errors)
    assert query(db, "SELECT count(*) FROM events_undated WHERE created_at IS NOT NULL") == [(0,)]
    assert query(db, "SELECT count(*) FROM operator_sessions") == [(len(stamps) - 2,)]


def test_the_default_partition_refuses_dated_rows(db):
    with pytest.raises(Exception, match="events_undated_has_no_date"):
        execute(db, """INSERT INTO events_undated (id, event_key, source, name, created_at, received_at,
                                                   receipt_ids, payload, status, error) VALUES
                       (1, gen_random_uuid(), 'd', 'x', now(), now(), '{r}', '{}', 'unhandled', 'e')""")


def test_rolling_partitions_ahead_moves_the_far_future_rows_and_is_idempotent(settings, db):
    """Run from a session in another zone: the bounds are UTC month starts all the same."""
    from pushline.partitions import roll

    execute(db, "SET timezone = 'America/Sao_Paulo'")
    execute(db, """INSERT INTO events (event_key, source, name, created_at, received_at, receipt_ids, payload,
                                     status, error)
                 VALUES (gen_random_uuid(), 'd', 'x', now() + interval '5 months', now(), '{r}', '{}',
                         'unhandled', 'e')""")
    [(where,)] = query(db, "SELECT tableoid::regclass::text FROM events")
    assert where == "events_after"
    [(made,)] = query(db, "SELECT pushline_roll_partitions(7)")
    assert made == 4
    [(where,)] = query(db, "SELECT tableoid::regclass::text FROM events")
    month = query(db, "SELECT to_char((now() + interval '5 months') AT TIME ZONE 'UTC', 'YYYY_MM')")[0][0]
    assert where == f"events_{month}"
    assert roll(settings.database_url, months_ahead=7) == 0
    bounds = query(db, """SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                                          'FROM \\(''([^'']+)''\\)'))[1]::timestamptz AT TIME ZONE 'UTC'
                          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                          WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'""")
    assert len(bounds) >= 12
    for name, lower in bounds:
        assert (lower.year, lower.month, lower.day, lower.hour, lower.minute) == \
            (int(name[7:11]), int(name[12:14]), 1, 0, 0), name
    execute(db, "RESET timezone")


# -- what cannot be classified ---------------------------------------------

def test_what_cannot_be_stored_as_sent_is_kept_minimal_or_dead_lettered_and_the_rest_flows(loop, queue, db,
                                                                                           settings):
    good = enqueue(queue, login(9, "2014-01-01 08:00:00"))
    # Bypassing the edge (which refuses it): a string PostgreSQL cannot store; a name too
    # long for an index row (the edge takes it); and an item whose envelope is unreadable.
    bad = push_raw(queue, '{"name": "x.y", "s": "nul \\u0000 here"}')
    long_name = push_raw(queue, json.dumps({"name": os.urandom(4000).hex(), "parameters": {}}))
    queue.push(b"broken\tsrc\xff\t%.6f\n{}" % (time.time() - 50), high_water=10**9)  # header not UTF-8
    good += enqueue(queue, logout(9, "2014-01-01 09:00:00"))
    drain(loop)
    rows = {ids[0]: (status, error, payload) for ids, status, error, payload in
            query(db, "SELECT receipt_ids, status, error, payload FROM events")}
    assert set(rows) == {*good, bad, long_name}
    assert rows[bad][0] == "rejected" and "Unicode" in rows[bad][1]
    assert rows[bad][2] == {"name": "x.y", "unstorable_body": '{"name": "x.y", "s": "nul \\u0000 here"}'}
    assert rows[long_name][0] == "rejected" and "index row" in rows[long_name][1]
    assert len(rows[long_name][2]["name"]) == 200
    assert query(db, "SELECT duration_seconds FROM operator_sessions") == [(3600.0,)]
    assert queue.dead_letter_count() == 1
    [(receipt, reason)] = queue.dead_letter_reasons().items()
    assert receipt == "broken" and reason.startswith("envelope: ")

    text = create_app(settings).test_client().get("/metrics").get_data(as_text=True)
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["pushline_dead_letters"] == 1
    assert values["pushline_oldest_pending_seconds"] >= 50  # parked is not stored
    out = subprocess.run([sys.executable, "-m", "pushline.cli", "stats"], env=settings_env(settings), cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    assert report["dead_letters"] == 1 and "broken" in report["dead_letter_reasons"]

    out = subprocess.run([sys.executable, "-m", "pushline.cli", "replay", "--dead-letters"],
                         env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == {"dead_letters_requeued": 1}
    assert queue.dead_letter_count() == 0 and queue.depth() == 1


def test_a_handler_that_hangs_past_the_statement_timeout_sends_its_batch_to_the_suspects(settings, db, rq):
    """A batch whose statement times out is retried one item at a time, with strikes: the queue goes on."""
    registry = registry_with("conversation.end", lambda cur, events: cur.execute("SELECT pg_sleep(3)"))
    loop = Consumer(settings, registry, name="slow")
    try:
        with loop.conn.cursor() as cur:
            cur.execute("SET statement_timeout = 500")
        loop.conn.commit()
        enqueue(loop.queue, conversation("end", 40, "2014-01-01 08:00:00"), login(41, "2014-01-01 08:00:00"))
        assert loop.step(block_seconds=0) == 2  # handled: given back, not raised
        assert loop.queue.redis.llen(loop.queue.suspect) == 2 and loop.queue.depth() == 0
        assert loop.queue.redis.hlen(loop.queue.strikes) == 0  # a batch of two: no strike yet
    finally:
        loop.close()


# -- leases ----------------------------------------------------------------

def test_a_slow_batch_keeps_its_lease_and_gets_no_strike(settings, db, rq):
    fast = make_settings(settings.database_url, settings.redis_url, PUSHLINE_LEASE_SECONDS="5",
                         PUSHLINE_QUEUE_PREFIX=settings.queue_prefix)
    handler = registry_with_handlers().get("operator.login")

    def slow_apply(cur, events):
        time.sleep(8)  # longer than the lease
        handler.apply(cur, events)

    loop = Consumer(fast, registry_with("operator.login", slow_apply), name="slowpoke")
    beat = LeaseKeeper(loop)
    beat.start()
    other = Consumer(fast, registry_with_handlers(), name="other")
    try:
        enqueue(loop.queue, login(50, "2014-01-01 08:00:00"))
        worker = threading.Thread(target=lambda: loop.step(block_seconds=0))
        worker.start()
        time.sleep(6.5)  # past the first deadline: another worker sweeps for expired leases
        assert other.queue.reclaim() == 0
        assert list(loop.in_hand) and other.queue.claimed() == 1  # still ours, still leased
        worker.join()
        assert query(db, "SELECT status, deliveries FROM events") == [("processed", 1)]
        assert other.queue.redis.hlen(other.queue.strikes) == 0 and other.queue.claimed() == 0
        assert loop.events_done == 1
    finally:
        beat.stop()
        loop.close()
        other.close()


def test_an_ack_after_the_lease_was_lost_changes_nothing(settings, queue, db):
    handler = registry_with_handlers().get("operator.login")
    swept = []

    def stall_then_apply(cur, events):
        swept.append(queue.reclaim(now=time.time() + 3600))  # we stall past the lease mid-batch...
        handler.apply(cur, events)  # ... and wake up and store anyway

    loop = Consumer(settings, registry_with("operator.login", stall_then_apply), name="stalled")
    enqueue(queue, login(60, "2014-01-01 08:00:00"), logout(60, "2014-01-01 09:00:00"))
    batch = queue.claim(10)
    try:
        assert loop.process(batch) == "stored"
    finally:
        loop.close()
    assert swept == [2]  # the items went to the suspects (with a strike: the batch had started)
    assert queue.redis.llen(queue.suspect) == 2  # our ack did not remove what is no longer ours
    loop = Consumer(settings, registry_with_handlers(), name="other")
    drain(loop)  # another worker processes the suspects
    assert query(db, "SELECT name, deliveries FROM events ORDER BY name") == [
        ("operator.login", 1), ("operator.logout", 1)]
    assert query(db, "SELECT duration_seconds FROM operator_sessions") == [(3600.0,)]
    assert queue.redis.hlen(queue.strikes) == 0
    loop.close()


def test_a_task_that_comes_after_its_lease_ended_stores_nothing(loop, queue, db):
    enqueue(queue, login(61, "2014-01-01 08:00:00"))
    batch = queue.claim(10)
    assert queue.reclaim(now=time.time() + 3600) == 1  # no task began it: back to the queue, no strike
    assert queue.depth() == 1 and queue.redis.hlen(queue.strikes) == 0
    assert loop.process(batch) == "lease lost"  # a late or duplicated task message
    assert query(db, "SELECT count(*) FROM events") == [(0,)]
    assert drain(loop) == 1
    assert query(db, "SELECT deliveries FROM events") == [(1,)]


# -- a worker that cannot go on ---------------------------------------------

def test_health_fails_when_events_wait_and_the_worker_made_no_progress(settings, rq):
    from pushline.queue import EventQueue

    queue = EventQueue(rq, settings.queue_prefix)
    stats = WorkerStats(rq, settings.queue_prefix)
    queue.push(Envelope("old", "default", time.time() - 100, b"{}").encode(), high_water=10**9)

    def health(progress_age: float) -> int:
        stats.beat("w@test", {"last_progress": time.time() - progress_age, "beat": time.time()})
        return subprocess.run([sys.executable, "-m", "pushline.cli", "health", "--worker", "w@test",
                               "--max-stall", "30"], env=settings_env(settings), cwd=ROOT,
                              capture_output=True, timeout=60).returncode

    assert health(progress_age=60) == 1  # events waited 100 s, no progress for 60 s
    assert health(progress_age=5) == 0  # slow, but moving
    rq.delete(queue.incoming)
    assert health(progress_age=3600) == 0  # nothing waits: an idle worker is healthy


def test_a_dispatcher_that_dies_ends_its_process_with_the_reason(settings, tmp_path):
    script = tmp_path / "die.py"
    script.write_text(
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout)\n"
        "from workers.celery_app import DispatchStep\n"
        "class Broken:\n"
        "    def run(self):\n"
        "        raise RuntimeError('the loop broke')\n"
        "step = DispatchStep.__new__(DispatchStep)\n"
        "step.dispatcher = Broken()\n"
        "step._run()\n"
        "print('still alive')\n")
    out = subprocess.run([sys.executable, str(script)], env=settings_env(settings), cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert "worker exits: dispatcher died: RuntimeError: the loop broke" in out.stdout
    assert "still alive" not in out.stdout


# -- servers that stop answering without refusing ----------------------------

@pytest.fixture
def silent_server():
    """A TCP port whose kernel accepts connections that nobody ever answers (a paused server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def test_a_bounded_session_gives_up_on_a_silent_server(silent_server):
    started = time.monotonic()
    with pytest.raises(Timeout):
        BoundedSession(f"postgresql://x@127.0.0.1:{silent_server}/x", "test", io_seconds=1.0)
    assert time.monotonic() - started < 3


def test_a_push_is_answered_within_seconds_when_both_stores_hang(settings, silent_server):
    hung = make_settings(f"postgresql://x@127.0.0.1:{silent_server}/x", f"redis://127.0.0.1:{silent_server}/0")
    client = create_app(hung).test_client()
    started = time.monotonic()
    resp = client.post(f"/push/{TOKEN}", data=json.dumps(login(1, "2014-01-01 08:00:00")),
                       content_type="application/json")
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert time.monotonic() - started < 5
    started = time.monotonic()
    assert client.get("/readyz").status_code == 503
    assert time.monotonic() - started < 5


def test_a_push_goes_to_the_spool_within_seconds_when_redis_hangs(settings, silent_server, db):
    hung = make_settings(settings.database_url, f"redis://127.0.0.1:{silent_server}/0")
    client = create_app(hung).test_client()
    started = time.monotonic()
    resp = client.post(f"/push/{TOKEN}", data=json.dumps(login(1, "2014-01-01 08:00:00")),
                       content_type="application/json")
    assert resp.status_code == 202
    assert time.monotonic() - started < 5
    assert query(db, "SELECT count(*) FROM spool") == [(1,)]



def test_a_dispatcher_whose_tasks_are_never_taken_says_it_is_wedged(settings, db, rq):
    """Celery's consumer stopped taking tasks: the batches it sends come back unstarted."""
    from workers.dispatch import Dispatcher

    sent = []
    dispatcher = Dispatcher(settings, registry_with_handlers(), name="wedged", capacity=2,
                            send=lambda batch_id, kind, name: sent.append(batch_id))
    try:
        enqueue(dispatcher.queue, *[login(900 + i, "2014-01-01 08:00:00") for i in range(40)])
        import dataclasses

        dispatcher.consumer.settings = dataclasses.replace(settings, batch_size=5)
        for _ in range(4):  # send what fits in flight, then lose it all to the sweep
            while len(dispatcher.in_flight) < dispatcher.capacity:
                dispatcher.step()
            assert dispatcher.queue.reclaim(now=time.time() + 3600) > 0
            dispatcher.reconcile()
            if dispatcher.wedged():
                break
        # Two rounds: the first (2, all in flight) could be an outage; the second is not.
        assert dispatcher.wedged() and len(sent) == 4 and dispatcher.unreported_in_a_row == 4
        # One task that reports resets it: a slow consumer is not a wedged one.
        dispatcher.unreported_in_a_row = 2
        dispatcher.queue.redis.rpush(f"{settings.queue_prefix}:dispatch:wedged:done", "b1\tstored\t5")
        dispatcher.collect(block=False)
        assert dispatcher.unreported_in_a_row == 0 and not dispatcher.wedged()
    finally:
        dispatcher.consumer.close()


def test_a_worker_pointed_at_a_read_only_server_retries_and_rejects_nothing(settings, db, rq):
    """During a PostgreSQL failover a worker may reach a standby that is not primary yet:
    writes fail with read_only_sql_transaction. That is the server's state, not the data's:
    the batch goes back to the queue (no strike, nothing rejected or dead-lettered) and is
    stored once the server takes writes."""
    from workers.consumer import Transient

    name = settings.database_url.rsplit("/", 1)[1]
    loop = Consumer(settings, registry_with_handlers(), name="read-only")
    try:
        db.cursor().execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        enqueue(loop.queue, login(5, "2014-01-01 10:00:00"), logout(5, "2014-01-01 11:00:00"))
        for _ in range(3):  # every attempt meets the read-only server
            with pytest.raises(Transient):
                loop.step(block_seconds=0)
        assert loop.queue.depth() == 2
        assert loop.queue.redis.llen(loop.queue.suspect) == 0 and loop.queue.dead_letter_count() == 0
    finally:
        db.cursor().execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    try:
        assert drain(loop) == 2
    finally:
        loop.close()
    assert query(db, "SELECT status, count(*) FROM events GROUP BY 1") == [("processed", 2)]
