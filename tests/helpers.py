"""Building events and feeding them to the real queue and drain loop."""

from __future__ import annotations

import json
import time
import uuid

from pushline.envelope import Envelope
from pushline.queue import EventQueue


def login(op: int, created: str, name: str = "operator.login", sent: str = "2014-01-01 00:00:00", **extra) -> dict:
    return {"name": name, "datetime": {"created": created, "sent": sent}, "parameters": {"operator_id": op, **extra}}


def logout(op: int, created: str, **kw) -> dict:
    return login(op, created, name="operator.logout", **kw)


def conversation(kind: str, cid: int, created: str, type_: str = "chat", op: int = 1, website: int = 1,
                 group: int = 1, sent: str = "2014-01-01 00:00:00", **extra) -> dict:
    params = {"conversation_id": cid, "type": type_, "operator_id": op, "website_id": website, "group_id": group}
    params.update(extra)
    return {"name": f"conversation.{kind}", "datetime": {"created": created, "sent": sent}, "parameters": params}


def enqueue(queue: EventQueue, *bodies, source: str = "default") -> list[str]:
    ids = []
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        receipt = uuid.uuid4().hex
        queue.push(Envelope(receipt, source, time.time(), raw).encode(), high_water=10**9)
        ids.append(receipt)
    return ids


def drain(loop) -> int:
    """Run the real consumer until the queue is empty; returns items handled."""
    total = 0
    while handled := loop.step(block_seconds=0):
        total += handled
    return total
