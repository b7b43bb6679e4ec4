"""The ack path's bare RESP connection, against the real Redis."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
import redis

from pushline.queue import EventQueue
from pushline.resp import RespConnection, pack


@pytest.fixture
def key(rq):
    name = f"resp-test:{uuid.uuid4().hex}"
    yield name
    rq.delete(name)


def test_pack_is_the_resp_array_redis_py_sends(rq):
    packed = rq.connection_pool.get_connection().pack_command("LPUSH", "k", b"a\r\nb")
    assert pack(b"LPUSH", b"k", b"a\r\nb") == b"".join(packed)


def test_lpush_lands_in_the_urls_db_and_returns_the_depth(settings, rq, key):
    conn = RespConnection(settings.redis_url)
    assert conn.execute(b"LPUSH", key.encode(), b"one") == 1
    assert conn.execute(b"LPUSH", key.encode(), b"two") == 2
    assert rq.lrange(key, 0, -1) == [b"two", b"one"]  # redis-py on the same URL sees them
    assert conn.execute(b"LLEN", key.encode()) == 2


def test_a_redis_error_reply_is_redis_pys_response_error(settings, rq, key):
    rq.set(key, "a string")
    conn = RespConnection(settings.redis_url)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        conn.execute(b"LPUSH", key.encode(), b"x")
    assert conn.execute(b"GET", key.encode()) == b"a string"  # the socket is still usable


def test_a_connection_closed_by_the_server_is_reopened_once(settings, rq, key):
    conn = RespConnection(settings.redis_url)
    conn.execute(b"CLIENT", b"SETNAME", b"resp-test-victim")
    victims = [c["id"] for c in rq.client_list() if c.get("name") == "resp-test-victim"]
    assert len(victims) == 1
    rq.client_kill_filter(_id=victims[0])
    assert conn.execute(b"LPUSH", key.encode(), b"after") == 1
    assert rq.lrange(key, 0, -1) == [b"after"]


def test_nothing_listening_is_a_connection_error_not_a_hang():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        conn = RespConnection(f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            conn.execute(b"PING")
    assert time.monotonic() - started < 2


def test_a_server_that_never_answers_times_out_as_redis_timeout_error():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        conn = RespConnection(f"redis://127.0.0.1:{server.getsockname()[1]}/0", timeout=0.3)
        with pytest.raises(redis.TimeoutError):
            conn.execute(b"PING")


def test_user_and_password_from_the_url_are_sent_before_the_command(settings, rq, key):
    user, password = f"resp-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rq.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    try:
        host_port = settings.redis_url.split("://", 1)[1]
        conn = RespConnection(f"redis://{user}:{password}@{host_port}")
        assert conn.execute(b"ACL", b"WHOAMI") == user.encode()
        assert conn.execute(b"LPUSH", key.encode(), b"x") == 1
        wrong = RespConnection(f"redis://{user}:not-{password}@{host_port}")
        with pytest.raises(redis.ResponseError):
            wrong.execute(b"PING")
    finally:
        rq.acl_deluser(user)


def test_each_thread_has_its_own_socket(settings, rq, key):
    conn = RespConnection(settings.redis_url)
    names = []

    def push(i):
        conn.execute(b"LPUSH", key.encode(), b"%d" % i)
        names.append(conn.local.sock.getsockname())

    threads = [threading.Thread(target=push, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4
    assert sorted(rq.lrange(key, 0, -1)) == [b"0", b"1", b"2", b"3"]


def test_the_queue_pushes_through_it_and_keeps_the_high_water_mark(settings, rq):
    queue = EventQueue(rq, settings.queue_prefix, fast=RespConnection(settings.redis_url))
    assert [queue.push(b"e%d" % i, high_water=3) for i in range(4)] == [1, 2, 3, -1]
    assert queue.depth() == 3
    rq.rpop(queue.incoming)
    assert queue.push(b"again", high_water=3) == 3


def test_tls_urls_are_left_to_redis_py():
    assert RespConnection.for_url("rediss://127.0.0.1:6380/0") is None
    assert isinstance(RespConnection.for_url("redis://127.0.0.1:6379/0"), RespConnection)
