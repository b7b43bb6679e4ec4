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


# -- today's webhooks (CONTRACT 7) --------------------------------------------
def webhook(event_type: str, at: str, event_id: str | None = None, sent: str | None = None, **fields) -> dict:
    """A webhook body: flat camelCase; `at` is its createdAt. The eventId is
    derived from the content unless given, so the same call is the same event."""
    body = {"eventType": event_type, "platform": "ha", "createdAt": at, "sentAt": sent or at, **fields}
    body["eventId"] = event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(
        {k: v for k, v in body.items() if k != "sentAt"}, sort_keys=True)))
    return body


def pushed(cid: str, op: int, at: str, channel: str = "CHAT", project: int = 1, client: int = 1, **kw) -> dict:
    return webhook("v2.conversation.pushed", at, conversationId=cid, operatorId=op, channel=channel,
                   projectId=project, clientId=client, visitorId=f"visitor-{cid}", **kw)


def closed(cid: str, ops: list[int], at: str, channel: str = "CHAT", project: int = 1, client: int = 1, **kw) -> dict:
    return webhook("v2.conversation.closed", at, conversationId=cid, operatorIds=ops, channel=channel,
                   projectId=project, clientId=client, visitorId=f"visitor-{cid}", **kw)


def connected(user: int, at: str, **kw) -> dict:
    return webhook("user.connected", at, userId=user, clientId=1, **kw)


def disconnected(user: int, at: str, **kw) -> dict:
    return webhook("user.disconnected", at, userId=user, clientId=1, **kw)


def availability(user: int, at: str, *pairs: tuple[str, str], **kw) -> dict:
    return webhook("user.availability.updated", at, userId=user, clientId=1, origin="desk",
                   availabilities=[{"channel": c, "status": s} for c, s in pairs], **kw)


def answered(cid: str, at: str, project: int = 1, **answer) -> dict:
    """One answer click: customerSatisfaction=, netPromoterScore=, satisfactionComment= or customQuestion=."""
    return webhook("satisfaction.answered", at, conversationId=cid, projectId=project, clientId=1, **answer)
