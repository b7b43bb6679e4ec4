"""Redis clients: the one place they are made, every socket with bounded timeouts.

A Redis that stops answering without refusing (SIGSTOP, a lost network) must
cost a bounded wait, never a hang: every client has a connect and a read
timeout. Blocking commands (BLMOVE) wait at most `BLOCK_SECONDS`, well under
the read timeout.
"""

from __future__ import annotations

import redis

BLOCK_SECONDS = 1.0

# (connect, read) timeouts in seconds per use.
_TIMEOUTS = {
    "web": (1.0, 2.0),       # the ack path answers within seconds, through the spool if need be
    "worker": (2.0, 10.0),   # above BLOCK_SECONDS; a hung Redis is a retried, logged failure
    "tool": (2.0, 10.0),     # CLI commands and the status page
}


def client(url: str, use: str) -> redis.Redis:
    connect, read = _TIMEOUTS[use]
    return redis.Redis.from_url(url, socket_connect_timeout=connect, socket_timeout=read,
                                health_check_interval=30)
