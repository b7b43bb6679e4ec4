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
from collections.abc import Callable
from dataclasses import dataclass

import redis

from pushline.resp import RespConnection

# KEYS: incoming, batch, leases; ARGV: max items, lease deadline, batch id.
# Oldest items are at the right end of `incoming`.
# Copies before it trims (a script that fails half way is not rolled back: a
# failure may then duplicate, never lose), in chunks (Lua's unpack has a limit).
# At maxmemory Redis refuses a script's write that may grow memory only when it
# is the script's first write: each script below starts with one that cannot
# (a ZREM of nothing), so that claims, leases and acks go on while Redis is full
# and what they free makes room again.
# ARGV[4] '1': return only how many were claimed (a dispatcher hands the batch
# over by its id; its items would cross the wire and be parsed for nothing).
_CLAIM = """
local n = tonumber(ARGV[1])
local count_only = ARGV[4] == '1'
if n < 1 then if count_only then return 0 end return {} end
local items = redis.call('LRANGE', KEYS[1], -n, -1)
if #items == 0 then if count_only then return 0 end return items end
redis.call('ZREM', KEYS[3], '')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
redis.call('LTRIM', KEYS[1], 0, -#items - 1)
if count_only then return #items end
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

# The items of a batch whose lease ends, by expiry or by release:
# KEYS: incoming, leases, suspect, struck, strikes, started
# ARGV: batch key prefix, strike limit (0: no strike; then ARGV[3] says where:
# 'queue' for the consumer end of `incoming`, 'suspect'), the highest lease
# deadline to end (a lease extended since it was read as expired is kept), batch ids.
# An expired lease means its worker died (or stalled past its lease, which we
# cannot tell apart) holding the batch: one of its events may be what killed
# it. Its items go to `suspect`, to be processed one at a time, with a strike
# each (by receipt id); an item at the strike limit goes to `struck` instead,
# to be stored as rejected without running its handler. A plain release (the
# database is down) returns items to the consumer end of `incoming`.
_END_LEASES = """
local limit = tonumber(ARGV[2])
local target = ARGV[3] == 'suspect' and KEYS[3] or KEYS[1]
local highest = tonumber(ARGV[4])
local moved = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline and tonumber(deadline) <= highest then
    redis.call('ZREM', KEYS[2], id)
    -- A batch no task ever started (its Celery message was lost, or its worker died
    -- before it began) cannot have harmed anyone: back to the queue, no strike.
    local started = redis.call('HDEL', KEYS[6], id) == 1
    local batch_limit, batch_target = limit, target
    if not started and limit > 0 then batch_limit, batch_target = 0, KEYS[1] end
    while true do
      local item = redis.call('LPOP', key)
      if not item then break end
      moved = moved + 1
      if batch_limit == 0 then
        redis.call('RPUSH', batch_target, item)
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
  end
end
return moved
"""

# Acknowledge a stored batch, only while its lease is ours: a worker that
# stalled past its lease finds its items already given to another worker, and
# changes nothing here (the database side made its writes no-ops).
# KEYS: batch, leases, strikes, dead letters, dead-letter reasons, started
# ARGV: batch id, forget strikes (0/1), then pairs of (dead item, reason).
# Deletions come first (see _CLAIM on maxmemory).
_ACK = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local items = {}
if ARGV[2] == '1' then items = redis.call('LRANGE', KEYS[1], 0, -1) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
for _, item in ipairs(items) do
  redis.call('HDEL', KEYS[3], string.match(item, '^[^\t]*'))
end
for i = 3, #ARGV, 2 do
  redis.call('RPUSH', KEYS[4], ARGV[i])
  redis.call('HSET', KEYS[5], string.match(ARGV[i], '^[^\t]*'), ARGV[i + 1])
end
return 1
"""

# One item from the first non-empty list of KEYS[3..], under a lease like any batch;
# the oldest first (items are appended on the right), so that one item that keeps
# failing does not starve the others.
# KEYS: batch, leases, sources...; ARGV: lease deadline, batch id. Returns {source index, item}.
_CLAIM_ONE = """
redis.call('ZREM', KEYS[2], '')
for i = 3, #KEYS do
  local item = redis.call('LPOP', KEYS[i])
  if item then
    redis.call('RPUSH', KEYS[1], item)
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
    return {i - 2, item}
  end
end
return {}
"""

# A task begins work on a claimed batch: only while its lease is still ours,
# which it extends, and only one task (a retry keeps its task's id): a
# duplicated message finds another owner and leaves the batch alone. The
# owner marks the batch started (see _END_LEASES).
# KEYS: leases, started, batch; ARGV: deadline, batch id, owner (the task's id),
# '1' to return the batch's items (a task has only the id: one round trip, not two).
# Returns 1 (or the items), or 0 when the lease is gone or another task has the batch.
_START = """
redis.call('ZREM', KEYS[1], '')
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local owner = redis.call('HGET', KEYS[2], ARGV[2])
if owner and owner ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] == '1' then return {1, redis.call('LRANGE', KEYS[3], 0, -1)} end
return 1
"""

# Leases set or extended (ARGV[1] 'XX': only those that still exist); returns,
# per id, 1 if set or changed. KEYS: leases; ARGV: mode, deadline, ids.
_LEASE = """
redis.call('ZREM', KEYS[1], '')
local out = {}
for i = 3, #ARGV do
  if ARGV[1] == 'XX' then
    out[#out + 1] = redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[i])
  else
    out[#out + 1] = redis.call('ZADD', KEYS[1], 'CH', ARGV[2], ARGV[i])
  end
end
return out
"""

# The receipt time (envelope header) of the oldest item at either end of each
# list: the queue, every claimed batch, suspects, struck and dead letters.
# KEYS: incoming, leases, suspect, struck, dead letters; ARGV: batch key prefix.
_OLDEST = """
local oldest = nil
local function look(key)
  for _, index in ipairs({0, -1}) do
    local item = redis.call('LINDEX', key, index)
    if item then
      local t = tonumber(string.match(item, '^[^\t]*\t[^\t]*\t([^\\n]*)'))
      if t and (oldest == nil or t < oldest) then oldest = t end
    end
  end
end
look(KEYS[1]); look(KEYS[3]); look(KEYS[4]); look(KEYS[5])
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do look(ARGV[1] .. id) end
if oldest == nil then return false end
return tostring(oldest)
"""

STRIKE_LIMIT = 3


@dataclass
class Batch:
    id: str
    items: list[bytes]
    size: int = -1  # claimed without its items (EventQueue.claim(with_items=False)); else len(items)

    def __len__(self) -> int:
        return self.size if self.size >= 0 else len(self.items)


# How long a push waits for its replicas before it goes to the spool instead.
REPLICA_WAIT_MS = 200


class NotReplicated(redis.RedisError):
    """Redis has the event, but not the replicas REDIS_MIN_REPLICAS asks for."""


class EventQueue:
    def __init__(self, client: redis.Redis, prefix: str = "pushline", lease_seconds: int = 60,
                 fast: RespConnection | None = None):
        self.redis = client
        # The ack path's bare connection when the URL allows one, else redis-py.
        self._execute = fast.execute if fast is not None else client.execute_command
        self._fast = fast
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.incoming = f"{prefix}:incoming"
        self._incoming = self.incoming.encode()
        self.leases = f"{prefix}:leases"
        self.batch_prefix = f"{prefix}:batch:"
        self.suspect = f"{prefix}:suspect"
        # Items that outlived STRIKE_LIMIT workers: stored rejected, unprocessed.
        # (The key kept its first name, "deadletter", so that upgrades find them.)
        self.struck = f"{prefix}:deadletter"
        self.strikes = f"{prefix}:strikes"
        # Items that could not be stored at all, not even as rejected: parked,
        # counted in stats, /metrics and /status, brought back by `replay --dead-letters`.
        self.dead_letters = f"{prefix}:dead-letters"
        self.dead_reasons = f"{prefix}:dead-letter-reasons"
        self.started = f"{prefix}:started"  # batch ids a task has begun to work on
        self._over_high_water = False
        self._claim = client.register_script(_CLAIM)
        self._end_leases = client.register_script(_END_LEASES)
        self._ack = client.register_script(_ACK)
        self._claim_one = client.register_script(_CLAIM_ONE)
        self._oldest = client.register_script(_OLDEST)
        self._lease = client.register_script(_LEASE)
        self._holding = client.register_script(_HOLDING)
        self._start = client.register_script(_START)

    def push(self, item: bytes, high_water: int, replicas: int = 0) -> int:
        """Queue one envelope; returns the new depth, or -1 at or above high water.

        One LPUSH is the whole cost while the queue is below high water; the
        depth it returns tells when to start checking LLEN before each push.
        The queue may thus overshoot by one event per web process.

        With `replicas` (REDIS_MIN_REPLICAS), WAIT follows the LPUSH on the same
        connection: replication is asynchronous, and a failover to a replica
        that never got the event would lose it after its 202. NotReplicated
        when fewer replicas than that have it within REPLICA_WAIT_MS.
        """
        if self._over_high_water:
            if self._execute(b"LLEN", self._incoming) >= high_water:
                return -1
            self._over_high_water = False
        if replicas:
            depth, acked = self._push_replicated(item, replicas)
            if acked < replicas:
                raise NotReplicated(f"{acked} of {replicas} replicas took the event within {REPLICA_WAIT_MS} ms")
        else:
            depth = int(self._execute(b"LPUSH", self._incoming, item))
        self._over_high_water = depth >= high_water
        return depth

    def _push_replicated(self, item: bytes, replicas: int) -> tuple[int, int]:
        wait = (b"WAIT", str(replicas).encode(), str(REPLICA_WAIT_MS).encode())
        if self._fast is not None:  # one per-thread socket: WAIT sees the LPUSH before it
            depth = int(self._fast.execute(b"LPUSH", self._incoming, item))
            return depth, int(self._fast.execute(*wait))
        pipe = self.redis.pipeline(transaction=False)  # one pooled connection for both
        pipe.execute_command("LPUSH", self._incoming, item)
        pipe.execute_command(*wait)
        depth, acked = pipe.execute()
        return int(depth), int(acked)

    def depth(self) -> int:
        return int(self.redis.llen(self.incoming))

    def _holding_deadlines(self) -> list[float]:
        return [float(d) for d in self._holding(keys=[self.leases], args=[self.batch_prefix])]

    def claimed(self) -> int:
        """Batches taken by workers and not yet acknowledged."""
        return len(self._holding_deadlines())

    def _deadline(self) -> float:
        return time.time() + self.lease_seconds

    def claim_one(self, *sources: str) -> tuple[str, Batch] | None:
        """One item from the first non-empty of `sources`, under a lease like any batch."""
        batch_id = uuid.uuid4().hex
        got = self._claim_one(keys=[self.batch_prefix + batch_id, self.leases, *sources],
                              args=[self._deadline(), batch_id])
        if not got:
            return None
        index, item = got
        return sources[int(index) - 1], Batch(batch_id, [item])

    def claim(self, max_items: int, block_seconds: float = 0, wait_seconds: float = 0,
              with_items: bool = True) -> Batch | None:
        """Take up to `max_items` of the oldest events under a fresh lease.

        With `block_seconds`, wait that long for a first event when the queue
        is empty. The lease is registered before blocking, so an item that
        arrives in the batch list is never without one. With `wait_seconds`, a
        batch short of `max_items` waits that long once for more: at moderate
        rates one transaction then carries many events instead of one each.
        Without `with_items`, the batch comes back with its size only.
        """
        batch_id = uuid.uuid4().hex
        key = self.batch_prefix + batch_id
        flag = "0" if with_items else "1"

        def take(n: int) -> list[bytes] | int:
            return self._claim(keys=[self.incoming, key, self.leases], args=[n, self._deadline(), batch_id, flag])

        def count(got) -> int:
            return len(got) if with_items else int(got)

        got = take(max_items)
        items: list[bytes] = list(got) if with_items else []
        size = count(got)
        if not size:
            if not block_seconds:
                return None
            self._lease(keys=[self.leases], args=["NEW", self._deadline(), batch_id])
            first = self.redis.blmove(self.incoming, key, block_seconds, "RIGHT", "LEFT")
            if first is None:
                self.redis.zrem(self.leases, batch_id)
                return None
            # Registered again: had we stalled past the lease before BLMOVE ran, a
            # sweep would have ended it, and the item would sit in a list nobody owns.
            self._lease(keys=[self.leases], args=["NEW", self._deadline(), batch_id])
            got = take(max_items - 1)
            items = [first, *got] if with_items else []
            size = 1 + count(got)
        if wait_seconds and size < max_items:
            time.sleep(wait_seconds)
            got = take(max_items - size)
            if with_items:
                items += got
            size += count(got)
        return Batch(batch_id, items) if with_items else Batch(batch_id, [], size)

    def start(self, batch_id: str, owner: str = "in place") -> bool:
        """Begin work on a claimed batch as `owner`: False when its lease is gone
        (it was reclaimed, or already stored) or another owner began it (a
        duplicated task message), in which case leave it."""
        return bool(self._start(keys=[self.leases, self.started, self.batch_prefix + batch_id],
                                args=[self._deadline(), batch_id, owner, "0"]))

    def start_with_items(self, batch_id: str, owner: str) -> list[bytes] | None:
        """`start`, returning the batch's items; None when it is not ours."""
        got = self._start(keys=[self.leases, self.started, self.batch_prefix + batch_id],
                          args=[self._deadline(), batch_id, owner, "1"])
        return list(got[1]) if got else None

    def items(self, batch_id: str) -> list[bytes]:
        """The items of a claimed batch, as a task reads them from its id."""
        return self.redis.lrange(self.batch_prefix + batch_id, 0, -1)

    def holding(self, batch_ids: list[str]) -> dict[str, float]:
        """Lease deadlines of those batches that are still leased (not yet acked or reclaimed)."""
        if not batch_ids:
            return {}
        scores = self.redis.execute_command("ZMSCORE", self.leases, *batch_ids)
        return {b: float(s) for b, s in zip(batch_ids, scores, strict=True) if s is not None}

    def extend(self, batch_ids: list[str], extra_seconds: float = 0) -> list[str]:
        """Keep leases alive while their batches are worked on (or wait for a
        retry, `extra_seconds` longer); returns the ids whose lease is gone
        (expired and reclaimed: the batch is no longer ours)."""
        if not batch_ids:
            return []
        changed = self._lease(keys=[self.leases], args=["XX", self._deadline() + extra_seconds, *batch_ids])
        return [b for b, c in zip(batch_ids, changed, strict=True) if not c]

    def ack(self, batch: Batch, suspect: bool = False, dead: list[tuple[bytes, str]] = (),
            then: Callable[[redis.client.Pipeline], None] | None = None) -> bool:
        """Remove a stored batch (parking its dead letters); False when the
        lease was no longer ours, in which case nothing changes.

        `then` adds commands to send in the same round trip, after the ack
        (figures, a report to the dispatcher); their failures are ignored."""
        args = [batch.id, "1" if suspect else "0"]
        for item, reason in dead:
            args += [item, reason]
        keys = [self.batch_prefix + batch.id, self.leases, self.strikes, self.dead_letters, self.dead_reasons,
                self.started]
        if then is None:
            return bool(self._ack(keys=keys, args=args))
        pipe = self.redis.pipeline(transaction=False)
        # EVAL, not EVALSHA: a Redis that restarted has no script cache, and the
        # commands after the ack (the report among them) must never run without it.
        pipe.eval(_ACK, len(keys), *keys, *args)
        then(pipe)
        acked = pipe.execute(raise_on_error=False)[0]
        if isinstance(acked, Exception):
            raise acked
        return bool(acked)

    def release(self, batch: Batch, strike: bool = False, suspect: bool = False) -> int:
        """Give a batch back now instead of waiting for its lease: to the head of
        the queue (the database is down); with `suspect`, to the suspects, to be
        processed one at a time; with `strike` as well, one strike per item (the
        batch failed in a way that may be one item's fault)."""
        return self._end([batch.id], STRIKE_LIMIT if strike else 0, "suspect" if suspect or strike else "queue",
                         float("inf"))

    def reclaim(self, now: float | None = None, limit: int = 100) -> int:
        """Return the items of expired leases to the queue; returns how many moved."""
        now = time.time() if now is None else now
        expired = [b.decode() for b in self.redis.zrangebyscore(self.leases, "-inf", now, start=0, num=limit)]
        return self._end(expired, STRIKE_LIMIT, "suspect", now) if expired else 0

    def _end(self, batch_ids: list[str], strike_limit: int, target: str, highest: float) -> int:
        keys = [self.incoming, self.leases, self.suspect, self.struck, self.strikes, self.started]
        bound = "1e300" if highest == float("inf") else repr(highest)
        return int(self._end_leases(keys=keys, args=[self.batch_prefix, strike_limit, target, bound, *batch_ids]))

    # -- what waits, and since when --------------------------------------
    def oldest_pending_received_at(self) -> float | None:
        """Receipt time of the oldest event Redis holds that is not stored yet."""
        value = self._oldest(keys=[self.incoming, self.leases, self.suspect, self.struck, self.dead_letters],
                             args=[self.batch_prefix])
        return float(value) if value is not None else None

    def dead_letter_count(self) -> int:
        return int(self.redis.llen(self.dead_letters))

    def dead_letter_reasons(self, limit: int = 10) -> dict[str, str]:
        reasons = {}
        for key, value in self.redis.hscan_iter(self.dead_reasons, count=100):
            reasons[key.decode()] = value.decode("utf-8", "replace")
            if len(reasons) >= limit:
                break
        return reasons

    def requeue_dead_letters(self) -> int:
        """Put every dead letter back on the queue (after a fix); returns how many."""
        moved = 0
        while self.redis.lmove(self.dead_letters, self.incoming, "LEFT", "RIGHT") is not None:
            moved += 1
        if moved:
            self.redis.delete(self.dead_reasons)
        return moved

    def oldest_claim_age(self) -> float | None:
        deadlines = self._holding_deadlines()
        if not deadlines:
            return None
        return max(0.0, time.time() - (min(deadlines) - self.lease_seconds))
