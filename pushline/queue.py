"""A reliable event queue on Redis lists.

`incoming` holds accepted envelopes. A worker claims a batch by moving items,
atomically, into a list of its own (`batch:<id>`) and registering a lease in
the `leases` sorted set; it deletes both only after PostgreSQL committed the
batch. A worker that dies leaves its batch under an expiring lease, and
`reclaim` puts the items back at the head of `incoming`. Every accepted event
is thus always in exactly one list, and is processed at least once; the
database side makes a second processing a no-op.

Only Redis 6.2 commands are used (the embedded server is 6.2).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from pushline.resp import RespConnection

# KEYS: incoming, batch, leases; ARGV: max items, lease deadline, batch id.
# Oldest items are at the right end of `incoming`.
_CLAIM = """
local n = tonumber(ARGV[1])
local items = redis.call('LRANGE', KEYS[1], -n, -1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], 0, -#items - 1)
redis.call('RPUSH', KEYS[2], unpack(items))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return items
"""

# KEYS: leases; ARGV: batch key prefix. Leases whose batch holds events, oldest
# deadline first (a worker waiting on an empty queue holds an empty lease).
_HOLDING = """
local out = {}
local ids = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  if redis.call('EXISTS', ARGV[1] .. ids[i]) == 1 then
    out[#out + 1] = ids[i + 1]
  end
end
return out
"""

# KEYS: incoming, leases, suspect, deadletter, strikes
# ARGV: now, batch key prefix, max leases, strike limit (0: a release, no strike).
# An expired lease means its worker died holding the batch: one of its events may
# be what killed it. Its items go to `suspect`, to be processed one at a time,
# with a strike each (by receipt id); an item at the strike limit goes to
# `deadletter` instead, to be stored as rejected without running its handler.
# A release (the worker gave the batch back itself) returns items to `incoming`.
_RECLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local limit = tonumber(ARGV[4])
local moved = 0
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  while true do
    local item = redis.call('LPOP', key)
    if not item then break end
    moved = moved + 1
    if limit == 0 then
      redis.call('RPUSH', KEYS[1], item)
    else
      local receipt = string.match(item, '^[^\t]*')
      if redis.call('HINCRBY', KEYS[5], receipt, 1) >= limit then
        redis.call('HDEL', KEYS[5], receipt)
        redis.call('RPUSH', KEYS[4], item)
      else
        redis.call('RPUSH', KEYS[3], item)
      end
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], id)
end
return moved
"""

STRIKE_LIMIT = 3


@dataclass
class Batch:
    id: str
    items: list[bytes]


class EventQueue:
    def __init__(self, client: redis.Redis, prefix: str = "pushline", lease_seconds: int = 60,
                 fast: RespConnection | None = None):
        self.redis = client
        # The ack path's bare connection when the URL allows one, else redis-py.
        self._execute = fast.execute if fast is not None else client.execute_command
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.incoming = f"{prefix}:incoming"
        self._incoming = self.incoming.encode()
        self.leases = f"{prefix}:leases"
        self.batch_prefix = f"{prefix}:batch:"
        self.suspect = f"{prefix}:suspect"
        self.deadletter = f"{prefix}:deadletter"
        self.strikes = f"{prefix}:strikes"
        self._over_high_water = False
        self._claim = client.register_script(_CLAIM)
        self._reclaim = client.register_script(_RECLAIM)
        self._holding = client.register_script(_HOLDING)

    def push(self, item: bytes, high_water: int) -> int:
        """Queue one envelope; returns the new depth, or -1 at or above high water.

        One LPUSH is the whole cost while the queue is below high water; the
        depth it returns tells when to start checking LLEN before each push.
        The queue may thus overshoot by one event per web process.
        """
        if self._over_high_water:
            if self._execute(b"LLEN", self._incoming) >= high_water:
                return -1
            self._over_high_water = False
        depth = int(self._execute(b"LPUSH", self._incoming, item))
        self._over_high_water = depth >= high_water
        return depth

    def depth(self) -> int:
        return int(self.redis.llen(self.incoming))

    def _holding_deadlines(self) -> list[float]:
        return [float(d) for d in self._holding(keys=[self.leases], args=[self.batch_prefix])]

    def claimed(self) -> int:
        """Batches taken by workers and not yet acknowledged."""
        return len(self._holding_deadlines())

    def _deadline(self) -> float:
        return time.time() + self.lease_seconds

    def claim_one(self, source: str) -> Batch | None:
        """One item from `suspect` or `deadletter`, under a lease like any batch."""
        batch_id = uuid.uuid4().hex
        items = self._claim(keys=[source, self.batch_prefix + batch_id, self.leases],
                            args=[1, self._deadline(), batch_id])
        return Batch(batch_id, list(items)) if items else None

    def claim(self, max_items: int, block_seconds: float = 0, wait_seconds: float = 0) -> Batch | None:
        """Take up to `max_items` of the oldest events under a fresh lease.

        With `block_seconds`, wait that long for a first event when the queue
        is empty. The lease is registered before blocking, so an item that
        arrives in the batch list is never without one. With `wait_seconds`, a
        batch short of `max_items` waits that long once for more: at moderate
        rates one transaction then carries many events instead of one each.
        """
        batch_id = uuid.uuid4().hex
        key = self.batch_prefix + batch_id
        items = self._claim(keys=[self.incoming, key, self.leases], args=[max_items, self._deadline(), batch_id])
        if not items:
            if not block_seconds:
                return None
            self.redis.zadd(self.leases, {batch_id: self._deadline()})
            first = self.redis.blmove(self.incoming, key, block_seconds, "RIGHT", "LEFT")
            if first is None:
                self.redis.zrem(self.leases, batch_id)
                return None
            items = [first, *self._claim(keys=[self.incoming, key, self.leases],
                                         args=[max_items - 1, self._deadline(), batch_id])]
        items = list(items)
        if wait_seconds and len(items) < max_items:
            time.sleep(wait_seconds)
            items += self._claim(keys=[self.incoming, key, self.leases],
                                 args=[max_items - len(items), self._deadline(), batch_id])
        return Batch(batch_id, items)

    def extend(self, batch: Batch) -> None:
        """Keep a lease alive while its batch is still being worked on."""
        self.redis.zadd(self.leases, {batch.id: self._deadline()}, xx=True)

    def ack(self, batch: Batch, suspect: bool = False) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.batch_prefix + batch.id)
            pipe.zrem(self.leases, batch.id)
            if suspect:  # it did not kill us after all: forget its strikes
                pipe.hdel(self.strikes, *[item.split(b"\t", 1)[0] for item in batch.items])
            pipe.execute()

    def release(self, batch: Batch) -> int:
        """Give a batch back now (e.g. the database is down) instead of waiting for its lease."""
        self.redis.zadd(self.leases, {batch.id: 0}, xx=True)
        return self._run_reclaim(now=0, limit=100, strike_limit=0)

    def reclaim(self, now: float | None = None, limit: int = 100) -> int:
        """Return the items of expired leases to the queue; returns how many moved."""
        now = time.time() if now is None else now
        return self._run_reclaim(now, limit, STRIKE_LIMIT)

    def _run_reclaim(self, now: float, limit: int, strike_limit: int) -> int:
        keys = [self.incoming, self.leases, self.suspect, self.deadletter, self.strikes]
        return int(self._reclaim(keys=keys, args=[now, self.batch_prefix, limit, strike_limit]))

    def oldest_claim_age(self) -> float | None:
        deadlines = self._holding_deadlines()
        if not deadlines:
            return None
        return max(0.0, time.time() - (min(deadlines) - self.lease_seconds))
