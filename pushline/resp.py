"""A bare RESP connection for the ack path's one command per request.

redis-py's command path (pool checkout, retry wrapper, observability hooks,
response callbacks) costs about three times the CPU of the socket calls
themselves, and the ack path pays it on every push. Here a command is one
`sendall` and one `recv` on a socket kept per thread, replies parsed by hiredis.
The options come from redis-py's own URL parser, so REDIS_URL means the same
thing everywhere; `rediss://` is left to redis-py (see `for_url`).
"""

from __future__ import annotations

import socket
import threading

import hiredis
import redis
from redis.connection import SSLConnection, parse_url


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n%s" % (len(args), b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))


class RespConnection:
    """Per-thread sockets to one Redis; errors surface as redis-py's exceptions."""

    def __init__(self, url: str, connect_timeout: float = 1.0, timeout: float = 2.0):
        opts = parse_url(url)
        self.address = opts.get("path") or (opts.get("host", "localhost"), int(opts.get("port", 6379)))
        self.family = socket.AF_UNIX if "path" in opts else socket.AF_INET
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        # Commands a fresh socket sends first, answered before any other.
        self.hello: list[bytes] = []
        if opts.get("password"):
            user = [opts["username"].encode()] if opts.get("username") else []
            self.hello.append(pack(b"AUTH", *user, opts["password"].encode()))
        if int(opts.get("db", 0)):
            self.hello.append(pack(b"SELECT", str(opts["db"]).encode()))
        self.local = threading.local()

    @staticmethod
    def for_url(url: str) -> RespConnection | None:
        """None for TLS and Sentinel URLs: those keep redis-py's connection (its SSL
        options, its master discovery)."""
        from pushline.config import SENTINEL_SCHEME

        if url.startswith(SENTINEL_SCHEME + "://"):
            return None  # the master moves: redis-py's Sentinel client finds it
        return None if parse_url(url).get("connection_class") is SSLConnection else RespConnection(url)

    def _connect(self) -> socket.socket:
        if self.family == socket.AF_INET:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            sock.connect(self.address)
        sock.settimeout(self.timeout)
        self.local.sock, self.local.reader = sock, hiredis.Reader()
        try:
            for command in self.hello:
                self._exchange(command)
        except BaseException:
            self.close()
            raise
        return sock

    def close(self) -> None:
        sock = getattr(self.local, "sock", None)
        self.local.sock = None
        if sock is not None:
            sock.close()

    def _exchange(self, packed: bytes):
        sock, reader = self.local.sock, self.local.reader
        sock.sendall(packed)
        reply = reader.gets()
        while reply is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    def execute(self, *args: bytes):
        """Send one command, return its reply. A socket that was already open
        gets one retry on a fresh socket (Redis restarted since its last use);
        the command may then have run twice, which at-least-once delivery allows.
        A timeout gets none: the server is there but not answering (paused, or
        a lost network), and a second wait would only double the push's delay."""
        reused = getattr(self.local, "sock", None) is not None
        for attempt in (1, 2):
            try:
                if getattr(self.local, "sock", None) is None:
                    self._connect()
                return self._exchange(pack(*args))
            except redis.ResponseError:
                raise
            except (OSError, hiredis.ProtocolError) as exc:
                self.close()
                if attempt == 2 or not reused or isinstance(exc, TimeoutError):
                    if isinstance(exc, TimeoutError):
                        raise redis.TimeoutError(f"Redis did not answer in time: {exc}") from exc
                    raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc
        raise AssertionError("unreachable")
