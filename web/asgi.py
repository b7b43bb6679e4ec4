"""gunicorn entry point: `gunicorn -k asgi web.asgi:app`.

Why ASGI in front of a Flask app: a client that sends its headers or body a
byte a second must not hold a thread. gunicorn's asgi worker reads every
request on an event loop, where a slow client costs a coroutine; only a
request whose body has fully arrived reaches a thread, which runs the Flask
app as plain WSGI. So 200 trickling connections leave the threads to the
pushes that are ready (tests/test_slow_clients.py).

The body is buffered up to MAX_BODY_BYTES + 1 bytes and no further: a larger
declared length is answered 413 by the app without its body ever being read.

A push runs on the event loop itself while Redis is steady (`inline_pushes`):
handing it to a thread and back cost about a third of the ack path's CPU (the
GIL passing between the loop and the threads), and its one LPUSH on a bare
socket is bounded by the Redis timeouts. Everything that may wait longer goes
to the threads: other endpoints (the status page queries PostgreSQL), pushes
within 30 s of a Redis failure (they go to the spool), pushes that wait for
replicas (REDIS_MIN_REPLICAS), pushes through redis-py's client (Sentinel,
TLS). The push that meets a Redis failure first still ends on the loop: its
timeout, then its spool insert (bounded too), hold the loop once.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pushline.resp import RespConnection
from web import create_app
from web.services import app_breaker


class BufferedWSGI:
    """Runs a WSGI app for ASGI requests once their body is in, in a thread pool."""

    def __init__(self, wsgi_app, threads: int, max_body: int, inline: Callable[[dict], bool] | None = None):
        self.wsgi_app = wsgi_app
        self.max_body = max_body
        self.inline = inline  # which requests run on the event loop (the scope decides)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pushline-web")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await self._body(receive)
        environ = self._environ(scope, body)
        if self.inline is not None and self.inline(scope):
            status, headers, chunks = self._run(environ)
        else:
            loop = asyncio.get_running_loop()
            status, headers, chunks = await loop.run_in_executor(self.executor, self._run, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(chunks)})

    async def _body(self, receive) -> bytes:
        parts, size, more = [], 0, True
        while more and size <= self.max_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        return b"".join(parts)

    def _run(self, environ: dict) -> tuple[int, list, list[bytes]]:
        started: list = []

        def start_response(status: str, headers, exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]),
                          [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]]

        result = self.wsgi_app(environ, start_response)
        try:
            chunks = list(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return started[0], started[1], chunks

    @staticmethod
    def _environ(scope: dict, body: bytes) -> dict:
        server = scope.get("server") or ("", 0)
        client = scope.get("client") or ("", 0)
        environ = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
            "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": str(server[0]),
            "SERVER_PORT": str(server[1]),  # the listener's own port (INTERNAL_PORT is told by it)
            "REMOTE_ADDR": str(client[0]),
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name == "CONTENT_LENGTH":
                environ["CONTENT_LENGTH"] = value
            elif name == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            else:
                key = f"HTTP_{name}"
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        if environ.pop("HTTP_TRANSFER_ENCODING", None) is not None or "CONTENT_LENGTH" not in environ:
            # A chunked body is whole now (or cut one byte past the limit, which the
            # app answers 413): the app sees it as a body of that length.
            environ["CONTENT_LENGTH"] = str(len(body))
        environ["wsgi.input_terminated"] = True
        return environ

    @staticmethod
    async def _lifespan(receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _bare_socket(url: str | None) -> bool:
    """Whether the push's LPUSH goes over pushline.resp's bare socket."""
    try:
        return bool(url) and RespConnection.for_url(url) is not None
    except ValueError:  # not a Redis URL at all: the app answers 503s, from a thread
        return False


def inline_pushes(flask_app) -> Callable[[dict], bool]:
    """POST /push while this process's Redis breaker is steady, and no push waits for replicas."""
    settings = flask_app.config["PUSHLINE"]
    breaker = app_breaker(flask_app)
    if settings.redis_min_replicas or not _bare_socket(settings.redis_url):
        # WAIT for replicas, or redis-py's client (Sentinel, TLS), whose reconnection
        # (a master lookup, retries with backoff) is not bounded by one socket timeout.
        return lambda scope: False

    def decide(scope: dict) -> bool:
        path = scope["path"]
        return scope["method"] == "POST" and (path == "/push" or path.startswith("/push/")) and breaker.steady()

    return decide


def make_app() -> BufferedWSGI:
    flask_app = create_app()
    settings = flask_app.config["PUSHLINE"]
    return BufferedWSGI(flask_app, threads=int(os.environ.get("WEB_THREADS", 4)), max_body=settings.max_body_bytes,
                        inline=inline_pushes(flask_app))


app = make_app()
