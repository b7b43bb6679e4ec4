"""Which requests the ASGI adapter runs on its event loop, and which in its threads.

A push runs on the loop while Redis is steady (the thread hop cost a third of
the ack path); anything that may wait on a server that stopped answering runs
in a thread, so that the loop keeps reading other clients' requests: other
endpoints (the status page queries PostgreSQL), pushes while the Redis breaker
has tripped lately (they go to the spool), pushes that wait for replicas.
"""

from __future__ import annotations

import asyncio
import threading

from web.asgi import BufferedWSGI, inline_pushes
from web.services import RedisBreaker, app_breaker


class _App:
    """A WSGI app that answers with the name of the thread it ran on."""

    def __init__(self, min_replicas: int = 0, url: str = "redis://127.0.0.1:6379/0"):
        class _Settings:
            redis_min_replicas = min_replicas
            redis_url = url

        self.config = {"PUSHLINE": _Settings()}
        self.extensions: dict = {}

    def __call__(self, environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [threading.current_thread().name.encode()]


def _request(adapter: BufferedWSGI, method: str, path: str) -> str:
    async def run() -> str:
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await adapter({"type": "http", "method": method, "path": path, "headers": [], "query_string": b""},
                      receive, send)
        loop_thread = threading.current_thread().name
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
        return "loop" if body == loop_thread else "thread"

    return asyncio.run(run())


def test_a_push_runs_on_the_loop_while_redis_is_steady_and_in_a_thread_after_a_failure():
    app = _App()
    adapter = BufferedWSGI(app, threads=2, max_body=1000, inline=inline_pushes(app))
    assert _request(adapter, "POST", "/push/token") == "loop"
    assert _request(adapter, "POST", "/push") == "loop"
    assert _request(adapter, "GET", "/status") == "thread"
    assert _request(adapter, "POST", "/pushy") == "thread"
    app_breaker(app).trip()  # Redis failed: the next pushes may wait on the spool or on a paused Redis
    assert _request(adapter, "POST", "/push/token") == "thread"


def test_a_breaker_is_steady_again_only_after_it_settled():
    breaker = RedisBreaker(pause=0.0, settle=0.2)
    assert breaker.steady()
    breaker.trip()
    assert breaker.closed() and not breaker.steady()
    threading.Event().wait(0.25)
    assert breaker.steady()


def test_pushes_that_wait_for_replicas_never_run_on_the_loop():
    app = _App(min_replicas=1)
    adapter = BufferedWSGI(app, threads=2, max_body=1000, inline=inline_pushes(app))
    assert _request(adapter, "POST", "/push/token") == "thread"


def test_pushes_through_redis_pys_client_never_run_on_the_loop():
    """Sentinel's master lookup and TLS go through redis-py, whose reconnection
    retries with backoff: not bounded by one socket timeout."""
    for url in ("redis+sentinel://127.0.0.1:26379/mymaster/0", "rediss://127.0.0.1:6380/0"):
        app = _App(url=url)
        adapter = BufferedWSGI(app, threads=2, max_body=1000, inline=inline_pushes(app))
        assert _request(adapter, "POST", "/push/token") == "thread", url
