"""Today's iAdvize webhooks for the drain's mixed stream (see docs in bench/run.py).

A desk's day, simulated and then read in time order, so that a conversation's
events lie minutes apart in the stream as they do in production (its pushed
event in one batch, its transfer, close and satisfaction answers in later ones):

- conversations arrive about one a second on 300 users (operators); each has a
  `v2.conversation.pushed`, one time in five a transfer (a second pushed, another
  operator), a `v2.conversation.closed` naming every operator who handled it, and
  satisfaction answers after the close: CSAT (1-5) half the time, NPS (0-10) a third,
  a comment one in ten, a custom question one in ten (one click, one event each);
- each user connects (`user.connected`), sets its availability per channel
  (`user.availability.updated`, one to three channels, every 5-15 minutes), and
  disconnects after 2-5 hours (`user.disconnected`), then comes back after a break.

Bodies are as iAdvize sends them (flat camelCase, docs: /work/shared/webhooks-facts.md):
conversation times in UTC with milliseconds and `Z`, user and satisfaction times
with an offset; every `eventId` is a distinct UUID. The same seed gives the same bodies.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid

BASE = dt.datetime(2024, 3, 4, 7, 0, tzinfo=dt.UTC)
PARIS = dt.timezone(dt.timedelta(hours=1))  # user and satisfaction events carry an offset
USERS = 300
CONVERSATIONS_PER_SECOND = 1.0
CHANNELS = ["CHAT"] * 12 + ["CALL"] * 2 + ["VIDEO", "FACEBOOK", "SMS", "WHATSAPP"]  # any string is accepted
AVAILABILITY_CHANNELS = ("CHAT", "CALL", "VIDEO")
PROJECTS = (12, 13, 14, 15)
CLIENT = 340


def _z(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _offset(t: dt.datetime) -> str:
    return t.astimezone(PARIS).isoformat(timespec="seconds")


class _Stream:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.events: list[tuple[float, int, dict]] = []  # (seconds from BASE, sequence, body)
        self.ids: set[str] = set()

    def uuid(self) -> str:
        value = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        assert value not in self.ids
        self.ids.add(value)
        return value

    def add(self, at: float, event_type: str, offset_time: bool, **fields) -> None:
        created = BASE + dt.timedelta(seconds=at)
        sent = created + dt.timedelta(seconds=self.rng.uniform(0.05, 1.5))
        fmt = _offset if offset_time else _z
        platform = self.rng.choice(("ha", "ha", "ha", "sd", "HA"))
        body = {"eventId": self.uuid(), "eventType": event_type, "platform": platform, "clientId": CLIENT, **fields,
                "createdAt": fmt(created), "sentAt": fmt(sent)}
        self.events.append((at, len(self.events), body))

    def conversation(self, start: float) -> None:
        rng = self.rng
        cid, visitor = self.uuid(), self.uuid()
        channel = rng.choice(CHANNELS)
        common = {"projectId": rng.choice(PROJECTS), "conversationId": cid, "channel": channel, "visitorId": visitor}
        if channel in ("CHAT", "CALL", "VIDEO") and rng.random() < 0.5:
            common["visitorExternalId"] = str(rng.randrange(10**7, 10**8))  # deprecated, onsite only
        operators = [rng.randrange(1, USERS + 1)]
        self.add(start, "v2.conversation.pushed", False, operatorId=operators[0], **common)
        end = start + rng.uniform(120, 1800)
        if rng.random() < 0.2:  # a transfer: pushed again, to another operator
            other = rng.randrange(1, USERS + 1)
            operators.append(other if other != operators[0] else other % USERS + 1)
            self.add(rng.uniform(start + 30, end - 10), "v2.conversation.pushed", False, operatorId=operators[1],
                     **common)
        self.add(end, "v2.conversation.closed", False, operatorIds=operators, **common)
        at = end + rng.uniform(5, 60)
        answers = []
        if rng.random() < 0.5:
            answers.append({"customerSatisfaction": rng.choice((1, 2, 3, 4, 4, 5, 5, 5))})
        if rng.random() < 1 / 3:
            answers.append({"netPromoterScore": rng.randrange(0, 11)})
        if rng.random() < 0.1:
            answers.append({"satisfactionComment": rng.choice(("Very helpful, thanks!", "Too long to answer.",
                                                               "Parfait, merci \u00e0 vous"))})
        if rng.random() < 0.1:
            answers.append({"customQuestion": rng.random() < 0.7})
        for answer in answers:
            self.add(at, "satisfaction.answered", True, projectId=common["projectId"], conversationId=cid, **answer)
            at += rng.uniform(2, 30)

    def user(self, user: int, horizon: float) -> None:
        rng = self.rng
        t = rng.uniform(0, 3600)
        while t < horizon:
            self.add(t, "user.connected", True, userId=user)
            end = t + rng.uniform(2 * 3600, 5 * 3600)
            t += rng.uniform(1, 20)
            while t < end:
                channels = rng.sample(AVAILABILITY_CHANNELS, rng.choice((1, 1, 2, 3)))
                statuses = [{"channel": c, "status": "AVAILABLE" if rng.random() < 0.7 else "UNAVAILABLE"}
                            for c in channels]
                self.add(t, "user.availability.updated", True, userId=user, origin="desk", availabilities=statuses)
                t += rng.uniform(300, 900)
            self.add(end, "user.disconnected", True, userId=user)
            t = end + rng.uniform(600, 3600)


def webhook_bodies(n: int, seed: int = 7) -> list[bytes]:
    """`n` webhook bodies: the first `n` events, in createdAt order, of the simulated desk."""
    horizon = max(3600.0, n / 3.5)  # about 3.5 events a second at these rates
    while True:
        stream = _Stream(seed)
        at = 0.0
        while at < horizon:
            stream.conversation(at)
            at += stream.rng.expovariate(CONVERSATIONS_PER_SECOND)
        for user in range(1, USERS + 1):
            stream.user(user, horizon + 7200)
        events = sorted(e for e in stream.events if e[0] < horizon)
        if len(events) >= n:
            return [json.dumps(body).encode() for _, _, body in events[:n]]
        horizon *= 1.5


def mixed_bodies(push_api: list[bytes], webhooks: list[bytes]) -> list[bytes]:
    """One Push API body, then one webhook, and so on (the longer list's rest at the end)."""
    out = [body for pair in zip(push_api, webhooks, strict=False) for body in pair]
    shorter = min(len(push_api), len(webhooks))
    return out + push_api[shorter:] + webhooks[shorter:]


def describe(bodies: list[bytes]) -> dict[str, int]:
    """Events by type (Push API `name` or webhook `eventType`)."""
    counts: dict[str, int] = {}
    for body in bodies:
        data = json.loads(body)
        name = data.get("eventType") or data.get("name")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
