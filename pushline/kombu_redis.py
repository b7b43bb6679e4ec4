"""kombu's Redis and Sentinel transports, with one client object per channel.

kombu builds a new `redis.Redis` for every message it publishes and every
event it sends (`Channel.conn_or_acquire`): the object only wraps the
channel's connection pool, but building it costs 100-200 us of CPU (its
response-callback tables). A worker's main process sends one task and four
task events per batch, so that was most of the CPU it spent per batch, and
it sat right between one batch and the next. Here a channel keeps the client
it made for as long as its pool lives (a reconnection makes a new pool, and
so a new client). A client is safe to share between threads: each command
takes a connection from the pool.

Celery uses these through `broker_transport` (workers.celery_app); broker
URLs and options are unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

from kombu.transport import redis as kombu_redis


class _OneClient:
    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        pool = self.pool
        made = self.__dict__.get("_pushline_client")
        if made is None or made.connection_pool is not pool:
            made = self._create_client()
            self._pushline_client = made
        yield made


class Channel(_OneClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_OneClient, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(url: str) -> str | None:
    """The transport class for a broker URL (as pushline.celery_client makes them);
    None (kombu's own, by the URL's scheme) for any other scheme: kombu turns TLS on
    for `rediss://` by the transport's name, which a class of ours would not carry."""
    if url.startswith("sentinel://"):
        return f"{__name__}:SentinelTransport"
    if url.startswith("redis://"):
        return f"{__name__}:Transport"
    return None
