"""What the workers' Celery app and its clients share: queues and broker options.

The CLI sends maintenance tasks by name through a bare Celery app made here,
so that the shared package never imports the workers' code.
"""

from __future__ import annotations

from pushline.config import Settings

BATCHES = "pushline.batches"  # one task per claimed batch
HOUSEKEEPING = "pushline.housekeeping"  # beat's duties and maintenance


def broker_url(settings: Settings) -> str:
    from pushline.redis_client import sentinel_target

    target = sentinel_target(settings.redis_url)
    if target is None:
        return settings.redis_url or "redis://127.0.0.1:6379/0"
    # kombu's Sentinel transport: one URL per Sentinel, the master's name in the options.
    auth = f":{target.password}@" if target.password else ""
    return ";".join(f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.sentinels)


def broker_transport_options(settings: Settings) -> dict:
    from pushline.redis_client import sentinel_target

    target = sentinel_target(settings.redis_url)
    sentinel = {"master_name": target.master} if target is not None else {}
    return {
        **sentinel,
        "global_keyprefix": f"{settings.queue_prefix}:celery:",
        # Bounded waits on a Redis that stopped answering (a blocking read waits 1 s).
        "socket_timeout": 10, "socket_connect_timeout": 4, "socket_keepalive": True,
        # No ack emulation: kombu would record every message taken in an "unacked"
        # hash and remove it on ack, both in MULTI transactions, which Redis refuses
        # at maxmemory and which time out while Redis is paused. An ack that fails
        # leaves its prefetch slot taken for good, and the worker stops consuming
        # (seen in the fault suite). The lease, not the message, owns the events:
        # a message lost with its worker costs one lease period and nothing else.
        "ack_emulation": False,
    }


def send(settings: Settings, task: str, kwargs: dict | None = None, args: tuple = (), queue: str = HOUSEKEEPING) -> str:
    """Send a task by name (by default to the housekeeping queue); returns its id."""
    from celery import Celery

    client = Celery("pushline", broker=broker_url(settings))
    client.conf.update(broker_transport_options=broker_transport_options(settings), broker_connection_timeout=4,
                       broker_connection_retry_on_startup=False)
    result = client.send_task(task, args=args, kwargs=kwargs or {}, queue=queue, retry=False)
    return result.id
