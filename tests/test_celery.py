"""Celery does the work: real workers, beat and the tools ops use.

A Celery message only names a batch already under a lease, so a lost message
costs at most one lease and a duplicated one nothing; beat runs the
housekeeping; `celery inspect` and task events show the work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from pushline import celery_client
from pushline.envelope import Envelope
from pushline.queue import EventQueue
from pushline.workerstats import WorkerStats
from tests.conftest import ROOT, RUN_ID, make_settings, query, settings_env, start_beat, start_worker, wait_for
from tests.helpers import conversation, enqueue, login, logout

pytestmark = pytest.mark.slow

LEASE = 5
BIN = Path(sys.executable).parent


@pytest.fixture
def celery_settings(database_url, redis_url, db, request):
    """A queue of this test's own and a short lease (the sweep's figure is measured against it)."""
    name = request.node.name[:40]
    return make_settings(database_url, redis_url, PUSHLINE_QUEUE_PREFIX=f"celery-{RUN_ID}-{name}",
                         PUSHLINE_LEASE_SECONDS=str(LEASE))


def env_of(settings) -> dict:
    return {"PUSHLINE_LEASE_SECONDS": str(settings.lease_seconds)}


def queue_of(settings) -> EventQueue:
    import redis

    return EventQueue(redis.Redis.from_url(settings.redis_url), settings.queue_prefix, settings.lease_seconds)


def sessions(n: int, first: int) -> list[dict]:
    out = []
    for i in range(first, first + n):
        out += [login(i, "2014-01-01 08:00:00"), logout(i, "2014-01-01 09:00:00")]
    return out


def stored(db, first: int, last: int) -> list[tuple]:
    return query(db, """SELECT (payload->'parameters'->>'operator_id')::int, deliveries, status FROM events
                        WHERE (payload->'parameters'->>'operator_id')::int BETWEEN %s AND %s ORDER BY 1, 2""",
                 first, last)


def test_a_lost_task_message_costs_one_lease_and_no_event(celery_settings, db, tmp_path):
    """A dispatcher claimed a batch and its message never reached a pool (lost on
    the way, or the dispatcher died after claiming): the batch waits for its lease,
    then beat's sweep returns it to the queue, without a strike, and it is stored once."""
    queue = queue_of(celery_settings)
    enqueue(queue, *sessions(5, 9000))
    lost = queue.claim(100)  # the claim whose message is lost
    claimed_at = time.time()
    assert len(lost.items) == 10 and queue.depth() == 0
    worker = start_worker(celery_settings, tmp_path, name="lost", **env_of(celery_settings))
    beat = start_beat(celery_settings, tmp_path, **env_of(celery_settings))
    try:
        enqueue(queue, *sessions(2, 9100))  # meanwhile the queue flows
        wait_for(lambda: len(stored(db, 9100, 9101)) == 4, timeout=20, what="the events behind it")
        assert stored(db, 9000, 9004) == []  # still leased: nobody touches it before its lease ends
        wait_for(lambda: len(stored(db, 9000, 9004)) == 10, timeout=LEASE + 30, what="the lost batch")
        took = time.time() - claimed_at
        # One lease, then at most one sweep period (5 s) and a batch's work.
        assert LEASE <= took < LEASE + 5 + 5, took
        assert {(d, s) for _, d, s in stored(db, 9000, 9004)} == {(1, "processed")}
        assert queue.redis.hlen(queue.strikes) == 0 and queue.redis.llen(queue.suspect) == 0
        assert queue.claimed() == 0 and queue.redis.hlen(queue.started) == 0
        assert query(db, "SELECT count(*) FROM operator_sessions WHERE operator_id BETWEEN 9000 AND 9004"
                         " AND duration_seconds = 3600") == [(5,)]
    finally:
        beat.stop()
        worker.stop()


def test_a_duplicated_task_message_changes_nothing(celery_settings, db, tmp_path):
    """The same store_batch message delivered twice at once, and once more after the
    batch was stored: one task stores it, the others find it not theirs."""
    queue = queue_of(celery_settings)
    figures = WorkerStats(queue.redis, celery_settings.queue_prefix)
    # Claimed before the worker starts, so that its own dispatcher cannot take them first.
    enqueue(queue, *sessions(20, 9200))
    batch = queue.claim(100)
    assert batch is not None and len(batch.items) == 40
    worker = start_worker(celery_settings, tmp_path, name="dup", PUSHLINE_WORKER_CONCURRENCY="2",
                          **env_of(celery_settings))
    try:
        args = (batch.id, "batch", "test-dispatcher")
        for _ in range(2):
            celery_client.send(celery_settings, "pushline.store_batch", args=args, queue=celery_client.BATCHES)
        wait_for(lambda: queue.claimed() == 0, timeout=30, what="the batch to be stored")
        wait_for(lambda: figures.read()["counters"].get("tasks_without_lease") == 1, timeout=20,
                 what="the duplicate to find the batch not its own")
        celery_client.send(celery_settings, "pushline.store_batch", args=args, queue=celery_client.BATCHES)
        wait_for(lambda: figures.read()["counters"].get("tasks_without_lease") == 2, timeout=20,
                 what="a late duplicate to find nothing")
        rows = stored(db, 9200, 9219)
        assert len(rows) == 40 and {(d, s) for _, d, s in rows} == {(1, "processed")}
        assert query(db, "SELECT count(*) FROM operator_sessions WHERE operator_id BETWEEN 9200 AND 9219") == [(20,)]
        assert figures.read()["counters"]["batches"] == 1
        assert queue.redis.hlen(queue.started) == 0 and queue.redis.hlen(queue.strikes) == 0
    finally:
        worker.stop()


def celery_cli(settings, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "celery"), "-A", "workers.celery_app", *argv], cwd=ROOT,
                          env=settings_env(settings), capture_output=True, text=True, timeout=60)


def replies(out: subprocess.CompletedProcess) -> dict:
    """`celery inspect --json` prints one JSON object: {node: reply}."""
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout[out.stdout.index("{"):])


def test_ops_see_the_work_with_celery_inspect_and_task_events(celery_settings, db, tmp_path):
    from workers.celery_app import make_celery

    worker = start_worker(celery_settings, tmp_path, name="seen", PUSHLINE_WORKER_CONCURRENCY="2",
                          **env_of(celery_settings))
    node = f"seen-{RUN_ID}@test"
    app = make_celery(celery_settings)
    seen: list[dict] = []
    try:
        # What Flower reads: the task events on the broker.
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            done = threading.Event()

            def capture():
                try:
                    receiver.capture(limit=None, timeout=None, wakeup=True)
                finally:
                    done.set()

            threading.Thread(target=capture, daemon=True).start()
            time.sleep(1.0)  # the receiver's queue is bound before the events are sent
            queue = queue_of(celery_settings)
            enqueue(queue, *sessions(30, 9300))
            wait_for(lambda: len(stored(db, 9300, 9329)) == 60, timeout=30, what="the events")
            wait_for(lambda: any(e["type"] == "task-succeeded" for e in seen), timeout=10,
                     what="a task-succeeded event")
            receiver.should_stop = True
            done.wait(5)
        received = {e["uuid"]: e["name"] for e in seen if e["type"] == "task-received"}
        succeeded = [e["uuid"] for e in seen if e["type"] == "task-succeeded"]
        assert "pushline.store_batch" in {received.get(u) for u in succeeded}

        stats = replies(celery_cli(celery_settings, "inspect", "stats", "--json", "-d", node))[node]
        assert stats["total"].get("pushline.store_batch", 0) >= 1
        assert stats["pool"]["max-concurrency"] == 2

        state = replies(celery_cli(celery_settings, "inspect", "drain", "--json", "-d", node))[node]
        assert state["pool"] == "prefork" and state["concurrency"] == 2
        assert state["events_done"] >= 60 and state["events_per_second"] > 0
        assert time.time() - state["last_progress"] < 30
        assert {"batch_in_hand", "lease_deadline", "phase", "in_flight"} <= set(state)
    finally:
        worker.stop()


def test_beat_runs_the_housekeeping(celery_settings, db, tmp_path):
    """The spool is forwarded, dead tasks' leases are swept and the duties are marked."""
    queue = queue_of(celery_settings)
    figures = WorkerStats(queue.redis, celery_settings.queue_prefix)
    queue.redis.delete(figures.housekeeping)
    # A batch a task began, whose worker then died: swept, struck once, stored one by one.
    # Claimed before any worker runs (a running dispatcher would claim the events first).
    enqueue(queue, login(9401, "2014-01-01 08:00:00"), logout(9401, "2014-01-01 09:00:00"))
    batch = queue.claim(10)
    assert len(batch) == 2 and queue.start(batch.id, "a-task-that-died")
    worker = start_worker(celery_settings, tmp_path, name="hk", **env_of(celery_settings))
    beat = start_beat(celery_settings, tmp_path, **env_of(celery_settings))
    try:
        # A push taken by the fallback while Redis was away.
        body = json.dumps(login(9400, "2014-01-01 08:00:00")).encode()
        db.cursor().execute("INSERT INTO spool (item) VALUES (%s)",
                            (Envelope(uuid.uuid4().hex, "default", time.time(), body).encode(),))
        wait_for(lambda: len(stored(db, 9400, 9400)) == 1, timeout=15, what="the spooled event")
        wait_for(lambda: len(stored(db, 9401, 9401)) == 2, timeout=LEASE + 20, what="the dead task's batch")
        assert query(db, "SELECT count(*) FROM spool") == [(0,)]
        ran = figures.duties()
        assert {"sweep_leases", "forward_spool", "roll_partitions"} <= set(ran)
        assert time.time() - ran["sweep_leases"] < 10 and time.time() - ran["forward_spool"] < 5
        # Beat sent them, not a dispatcher covering for a missing beat.
        assert "doing it here" not in worker.output()
    finally:
        beat.stop()
        worker.stop()


def test_replay_and_prune_run_as_tasks(celery_settings, db, tmp_path):
    queue = queue_of(celery_settings)
    worker = start_worker(celery_settings, tmp_path, name="maint", **env_of(celery_settings))
    env = settings_env(celery_settings)

    def cli(*argv):
        out = subprocess.run([sys.executable, "-m", "pushline.cli", *argv], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    try:
        enqueue(queue, conversation("start", 9500, "2014-01-01 08:00:00"),
                conversation("end", 9500, "2014-01-01 08:30:00"), login(9500, "2014-03-01 08:00:00"))
        wait_for(lambda: query(db, "SELECT count(*) FROM events") == [(3,)], timeout=20, what="the events")
        db.cursor().execute("TRUNCATE conversations")
        sent = cli("replay", "--rebuild", "--enqueue")
        assert sent["enqueued"] == "pushline.replay" and sent["task_id"]
        wait_for(lambda: query(db, "SELECT conversation_id, duration_seconds FROM conversations")
                 == [(9500, 1800.0)], timeout=30, what="the rebuild task")
        sent = cli("prune", "--before", "2014-02-01", "--enqueue")
        assert sent["enqueued"] == "pushline.prune"
        wait_for(lambda: query(db, "SELECT name FROM events") == [("operator.login",)], timeout=30,
                 what="the prune task")
        assert query(db, "SELECT count(*) FROM conversations") == [(1,)]  # derived rows stay
    finally:
        worker.stop()


def test_a_batch_past_the_hard_time_limit_loses_its_process_and_no_event(celery_settings, db, tmp_path):
    """Soft and hard limits sit below the lease (8 s here: 4 s and 6 s). A batch stuck
    on a lock past the hard limit loses its pool process; Celery replaces it and
    delivers the message again, which gives the batch back to be tried item by item."""
    settings = make_settings(celery_settings.database_url, celery_settings.redis_url,
                             PUSHLINE_QUEUE_PREFIX=celery_settings.queue_prefix, PUSHLINE_LEASE_SECONDS="8")
    queue = queue_of(settings)
    worker = start_worker(settings, tmp_path, name="limits", PUSHLINE_LEASE_SECONDS="8")
    blocker = psycopg2.connect(settings.database_url)
    try:
        with blocker.cursor() as cur:  # held past the hard limit, shorter than the worker's lock_timeout
            cur.execute("LOCK TABLE operator_sessions IN ACCESS EXCLUSIVE MODE")
        enqueue(queue, *sessions(3, 9600))
        wait_for(lambda: "Hard time limit (6.0s) exceeded" in worker.output(), timeout=20,
                 what="the hard time limit")
        blocker.rollback()
        # Given back at once, not after its lease (8 s) and a sweep: no beat runs here, and
        # the workers' own sweep would only come 30 s after their start.
        wait_for(lambda: len(stored(db, 9600, 9602)) == 6, timeout=8, what="the events after the limit")
        assert {(d, s) for _, d, s in stored(db, 9600, 9602)} == {(1, "processed")}
        assert query(db, "SELECT count(*) FROM operator_sessions WHERE operator_id BETWEEN 9600 AND 9602"
                         " AND duration_seconds = 3600") == [(3,)]
        assert "lost its pool process; its items are retried one at a time" in worker.output()
        assert worker.popen.poll() is None  # the worker lives on with a new pool process
        assert queue.claimed() == 0 and queue.redis.llen(queue.suspect) == 0
    finally:
        blocker.close()
        worker.stop()
