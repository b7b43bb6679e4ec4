"""Redis clients: the one place they are made, every socket with bounded timeouts.

A Redis that stops answering without refusing (SIGSTOP, a lost network) must
cost a bounded wait, never a hang: every client has a connect and a read
timeout. Blocking commands (BLMOVE) wait at most `BLOCK_SECONDS`, well under
the read timeout.

With REDIS_SENTINELS, settings.redis_url is a redis+sentinel:// URL (see
pushline.config.sentinel_url) and the client asks the Sentinels for the
master, again after a connection fails: a failover moves every tier to the
promoted replica by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from pushline.config import SENTINEL_SCHEME

BLOCK_SECONDS = 1.0

# (connect, read) timeouts in seconds per use.
_TIMEOUTS = {
    "web": (1.0, 2.0),       # the ack path answers within seconds, through the spool if need be
    "worker": (2.0, 10.0),   # above BLOCK_SECONDS; a hung Redis is a retried, logged failure
    "tool": (2.0, 10.0),     # CLI commands and the status page
}


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    master: str
    db: int
    password: str | None


def sentinel_target(url: str) -> SentinelTarget | None:
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return None
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    master, _, db = parts.path.lstrip("/").partition("/")
    sentinels = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts.split(",")]
    return SentinelTarget(sentinels, master, int(db or 0), parts.password)


def client(url: str, use: str) -> redis.Redis:
    connect, read = _TIMEOUTS[use]
    target = sentinel_target(url)
    if target is None:
        return redis.Redis.from_url(url, socket_connect_timeout=connect, socket_timeout=read,
                                    health_check_interval=30)
    timeouts = {"socket_connect_timeout": connect, "socket_timeout": read}
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=timeouts, **timeouts)
    return sentinel.master_for(target.master, db=target.db, password=target.password, health_check_interval=30,
                               **timeouts)
