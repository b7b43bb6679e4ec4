"""The reliable queue on real Redis: every item is always in exactly one list."""

from __future__ import annotations

import threading
import time

import pytest

from pushline.queue import STRIKE_LIMIT, EventQueue


@pytest.fixture
def queue(settings, rq):
    return EventQueue(rq, settings.queue_prefix, lease_seconds=30)


def everything(queue: EventQueue) -> list[bytes]:
    items = list(queue.redis.lrange(queue.incoming, 0, -1))
    for key in queue.redis.scan_iter(queue.batch_prefix + "*"):
        items += queue.redis.lrange(key, 0, -1)
    return sorted(items)


def test_claim_takes_the_oldest_under_a_lease_and_ack_forgets_them(queue):
    for i in range(5):
        queue.push(b"%d" % i, high_water=100)
    batch = queue.claim(3)
    assert sorted(batch.items) == [b"0", b"1", b"2"]
    assert queue.depth() == 2 and queue.claimed() == 1
    assert everything(queue) == [b"0", b"1", b"2", b"3", b"4"]
    queue.ack(batch)
    assert queue.claimed() == 0 and everything(queue) == [b"3", b"4"]


def test_an_expired_lease_sends_its_items_to_the_suspects_with_a_strike(queue):
    for i in range(3):
        queue.push(b"r%d\tdefault\t1.0\n{}" % i, high_water=100)
    batch = queue.claim(2)
    assert queue.start(batch.id)  # a task began work on it
    assert queue.reclaim(now=time.time()) == 0  # not expired yet
    assert queue.reclaim(now=time.time() + 31) == 2  # its worker died holding it
    assert queue.claimed() == 0 and queue.depth() == 1
    assert sorted(queue.redis.lrange(queue.suspect, 0, -1)) == sorted(batch.items)
    assert queue.redis.hgetall(queue.strikes) == {b"r0": b"1", b"r1": b"1"}
    source, one = queue.claim_one(queue.suspect)
    assert source == queue.suspect and len(one.items) == 1
    queue.ack(one, suspect=True)  # processed fine: its strikes are forgotten
    assert len(queue.redis.hgetall(queue.strikes)) == 1


def test_an_event_that_outlives_three_workers_is_struck_out(queue):
    queue.push(b"r9\tdefault\t1.0\n{}", high_water=100)
    batch = queue.claim(1)
    assert queue.start(batch.id)
    for strike in range(1, STRIKE_LIMIT + 1):
        assert queue.reclaim(now=time.time() + 31) == 1
        if strike < STRIKE_LIMIT:
            _, batch = queue.claim_one(queue.suspect)
            assert queue.start(batch.id)
    assert queue.redis.lrange(queue.struck, 0, -1) == [b"r9\tdefault\t1.0\n{}"]
    assert queue.redis.llen(queue.suspect) == 0 and queue.redis.hlen(queue.strikes) == 0


def test_a_batch_no_task_began_goes_back_to_the_queue_without_a_strike(queue):
    """Its task message was lost (or its worker died before starting it): nobody was harmed."""
    for i in range(3):
        queue.push(b"n%d\tdefault\t1.0\n{}" % i, high_water=100)
    batch = queue.claim(2)
    assert queue.reclaim(now=time.time() + 31) == 2
    assert queue.depth() == 3 and queue.claimed() == 0
    assert queue.redis.llen(queue.suspect) == 0 and queue.redis.hlen(queue.strikes) == 0
    assert not queue.start(batch.id)  # its task, arriving late, finds the lease gone
    assert sorted(queue.redis.lrange(queue.incoming, -2, -1)) == sorted(batch.items)  # oldest end again


def test_release_gives_a_batch_back_at_once_without_a_strike(queue):
    queue.push(b"a\tdefault\t1.0\n{}", high_water=100)
    batch = queue.claim(10)
    assert queue.release(batch) == 1
    assert queue.depth() == 1 and queue.claimed() == 0
    assert queue.redis.hlen(queue.strikes) == 0 and queue.redis.llen(queue.suspect) == 0


def test_a_worker_waiting_on_an_empty_queue_is_not_a_claimed_batch(queue):
    waiter = threading.Thread(target=lambda: queue.claim(10, block_seconds=1.5))
    waiter.start()
    time.sleep(0.3)
    assert queue.redis.zcard(queue.leases) == 1  # its lease exists, so an item it takes is never unowned
    assert queue.claimed() == 0 and queue.oldest_claim_age() is None
    waiter.join()
    assert queue.redis.zcard(queue.leases) == 0


def test_a_blocked_claim_wakes_up_for_a_new_item(queue):
    result = {}
    waiter = threading.Thread(target=lambda: result.update(batch=queue.claim(10, block_seconds=5)))
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    queue.push(b"late", high_water=100)
    waiter.join()
    assert result["batch"].items == [b"late"]
    assert time.monotonic() - started < 1
    assert queue.claimed() == 1


def _push_later(queue, items, delay):
    def push():
        time.sleep(delay)
        for item in items:
            queue.push(item, high_water=100)

    thread = threading.Thread(target=push)
    thread.start()
    return thread


def test_a_short_batch_waits_once_for_more_events(queue):
    queue.push(b"first", high_water=100)
    pusher = _push_later(queue, [b"second", b"third"], 0.1)
    batch = queue.claim(10, wait_seconds=1.0)
    pusher.join()
    assert sorted(batch.items) == [b"first", b"second", b"third"]
    assert queue.depth() == 0 and queue.claimed() == 1


def test_without_a_wait_a_batch_is_what_the_queue_holds(queue):
    queue.push(b"first", high_water=100)
    pusher = _push_later(queue, [b"second"], 0.2)
    batch = queue.claim(10)
    pusher.join()
    assert batch.items == [b"first"] and queue.depth() == 1


def test_a_blocked_claim_waits_for_more_after_its_first_event(queue):
    result = {}
    waiter = threading.Thread(target=lambda: result.update(batch=queue.claim(10, block_seconds=5, wait_seconds=0.5)))
    waiter.start()
    time.sleep(0.2)
    _push_later(queue, [b"a"], 0).join()
    _push_later(queue, [b"b", b"c"], 0.1).join()
    waiter.join()
    assert sorted(result["batch"].items) == [b"a", b"b", b"c"]
    assert queue.claimed() == 1


def test_a_full_batch_does_not_wait(queue):
    for i in range(3):
        queue.push(b"%d" % i, high_water=100)
    started = time.monotonic()
    batch = queue.claim(2, wait_seconds=30)
    assert time.monotonic() - started < 10  # far less than the wait it did not need
    assert sorted(batch.items) == [b"0", b"1"] and queue.depth() == 1  # the oldest two


def test_high_water_refuses_once_reached(queue):
    assert queue.push(b"1", high_water=2) == 1
    assert queue.push(b"2", high_water=2) == 2
    assert queue.push(b"3", high_water=2) == -1
    queue.claim(1)
    assert queue.push(b"3", high_water=2) == 2


def test_only_one_task_begins_a_batch_and_its_retry_may_begin_it_again(queue):
    """A duplicated Celery message carries another task id: it leaves the batch to the first."""
    queue.push(b"d1\tdefault\t1.0\n{}", high_water=100)
    batch = queue.claim(10)
    assert queue.start(batch.id, "task-a")
    assert not queue.start(batch.id, "task-b")  # the duplicate
    assert queue.start(batch.id, "task-a")  # task-a retried after a transient failure
    assert queue.ack(batch)
    assert not queue.start(batch.id, "task-a")  # stored: nothing left to begin
    assert queue.redis.hlen(queue.started) == 0 and queue.claimed() == 0


def test_a_push_that_no_replica_confirms_is_not_replicated(queue, settings):
    """REDIS_MIN_REPLICAS: this Redis has no replica, so WAIT gives up after REPLICA_WAIT_MS."""
    from pushline.queue import REPLICA_WAIT_MS, NotReplicated
    from pushline.resp import RespConnection

    for fast in (None, RespConnection.for_url(settings.redis_url)):  # redis-py's pipeline, the ack path's socket
        q = EventQueue(queue.redis, queue.prefix, fast=fast)
        started = time.monotonic()
        with pytest.raises(NotReplicated):
            q.push(b"w\tdefault\t1.0\n{}", high_water=100, replicas=1)
        assert time.monotonic() - started >= REPLICA_WAIT_MS / 1000 * 0.9
        assert q.push(b"x\tdefault\t1.0\n{}", high_water=100) >= 1  # without the requirement: at once
    assert queue.depth() == 4  # WAIT does not undo the LPUSH: the spool's copy is the same receipt


def test_a_claim_without_items_moves_them_and_says_how_many(queue):
    for i in range(5):
        queue.push(b"c%d\tdefault\t1.0\n{}" % i, high_water=100)
    batch = queue.claim(3, with_items=False)
    assert batch.items == [] and len(batch) == 3 and queue.depth() == 2
    assert sorted(queue.items(batch.id)) == [b"c0\tdefault\t1.0\n{}", b"c1\tdefault\t1.0\n{}",
                                             b"c2\tdefault\t1.0\n{}"]  # the three oldest
    short = queue.claim(10, with_items=False, wait_seconds=0.01)
    assert len(short) == 2 and queue.depth() == 0 and queue.claimed() == 2
    assert queue.claim(10, with_items=False) is None
