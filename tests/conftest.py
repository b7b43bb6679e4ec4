"""Real servers for every test: PostgreSQL and Redis, never fakes.

With DATABASE_URL / REDIS_URL set, the suite uses those servers but only a
throwaway database and an empty Redis db that it claims for itself. Unset,
it starts the embedded servers (as `make run` does). A server that cannot be
reached fails the run loudly instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
import redis

from pushline import devstack
from pushline.config import Settings
from pushline.db import migrate
from tests import http_client as http

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-default-0123456789abcdef"
PARIS_TOKEN = "tok-paris-0123456789abcdef"
RUN_ID = uuid.uuid4().hex[:8]
TABLES = ("events, conversations, operator_sessions, operator_events, operator_horizons, spool,"
          # today's webhooks (CONTRACT 7) and the side tables their handlers recompute from
          " conversations_v2, conversation_assignments, satisfaction, user_sessions, availability_periods,"
          " user_events, availability_events, conversation_event_ids")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def servers():
    env = {k: os.environ.get(k, "") for k in ("DATABASE_URL", "REDIS_URL", "PUSHLINE_PG_PORT", "PUSHLINE_REDIS_PORT")}
    env = {k: v for k, v in env.items() if v}
    embedded = devstack.bootstrap(env)
    yield env["DATABASE_URL"], env["REDIS_URL"]
    embedded.stop()


@pytest.fixture(scope="session")
def database_url(servers):
    server_url = servers[0]
    base = server_url.rsplit("/", 1)[0]
    name = f"pushline_test_{RUN_ID}"
    admin = psycopg2.connect(base + "/postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    migrate(url, "UTC")
    yield url
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


@pytest.fixture(scope="session")
def redis_url(servers):
    """An empty Redis db claimed for this run (we never touch a db holding data)."""
    base = servers[1].rsplit("/", 1)[0]
    marker = f"pushline-test-claim:{RUN_ID}"
    for index in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{index}")
        if client.dbsize() == 0 and client.set(marker, "1", nx=True):
            if client.dbsize() == 1:
                break
            client.delete(marker)
    else:
        pytest.fail(f"no empty Redis db on {base} for the tests")
    yield f"{base}/{index}"
    client.flushdb()


def make_settings(database_url: str, redis_url: str, **overrides) -> Settings:
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PUSH_TOKENS": f"{TOKEN},paris:{PARIS_TOKEN}",
        "PUSHLINE_QUEUE_PREFIX": f"pushline-test-{RUN_ID}",
    }
    values.update(overrides)
    return Settings.from_mapping(values)


@pytest.fixture(scope="session")
def settings(database_url, redis_url) -> Settings:
    return make_settings(database_url, redis_url)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a real process needs to run with these settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PUSH_TOKENS")}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        PUSH_TOKENS=",".join(t.secret if t.source == "default" else f"{t.source}:{t.secret}" for t in settings.tokens),
        PUSHLINE_QUEUE_PREFIX=settings.queue_prefix,
        PUSH_TIMEZONE=settings.timezone,
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


@pytest.fixture
def db(settings):
    """A connection to the test database; every table is emptied before the test."""
    conn = psycopg2.connect(settings.database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    yield conn
    conn.close()


@pytest.fixture
def rq(settings):
    """The test Redis db, emptied of this run's queue keys before the test."""
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(f"{settings.queue_prefix}:*"):
        client.delete(key)
    yield client
    client.close()


def query(conn, sql: str, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def wait_for(check, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A real server process we started; stopped by its PID only."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.send(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.popen.wait()
        self.handle.close()
        return self.popen.returncode


def start_web(settings: Settings, tmp_path: Path, **extra_env: str) -> tuple[Proc, str]:
    port = free_port()
    env = settings_env(settings, WEB_CONCURRENCY="2", **extra_env)
    proc = Proc([sys.executable, "-m", "pushline.cli", "web", "--bind", f"127.0.0.1:{port}"], env,
                tmp_path / f"web-{port}.log")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http.get(base + "/healthz").status == 200 or proc.popen.poll() is not None,
             timeout=30, what="gunicorn to answer")
    assert proc.popen.poll() is None, proc.output()
    return proc, base


def start_worker(settings: Settings, tmp_path: Path, name: str = "w1", **extra_env: str) -> Proc:
    # One pool process unless a test asks for more: eight workers of one CPU's
    # worth each are eight workers, at a third of the processes.
    extra_env.setdefault("PUSHLINE_WORKER_CONCURRENCY", "1")
    env = settings_env(settings, **extra_env)
    proc = Proc([sys.executable, "-m", "pushline.cli", "worker", "--name", f"{name}-{RUN_ID}@test"], env,
                tmp_path / f"worker-{name}.log")
    wait_for(lambda: "dispatcher started" in proc.output() or proc.popen.poll() is not None,
             timeout=30, what="the worker to start")
    assert proc.popen.poll() is None, proc.output()
    return proc


def start_beat(settings: Settings, tmp_path: Path, **extra_env: str) -> Proc:
    env = settings_env(settings, **extra_env)
    proc = Proc([sys.executable, "-m", "pushline.cli", "beat", "--schedule", str(tmp_path / "beat-schedule")], env,
                tmp_path / "beat.log")
    wait_for(lambda: "beat v" in proc.output() or proc.popen.poll() is not None, timeout=30,
             what="beat to start")
    assert proc.popen.poll() is None, proc.output()
    return proc


@pytest.fixture(scope="session")
def pipeline(database_url, redis_url, tmp_path_factory):
    """A running web tier and worker, shared by the end-to-end tests.

    They have a queue of their own, so that in-process tests never race them."""
    settings = make_settings(database_url, redis_url, PUSHLINE_QUEUE_PREFIX=f"pushline-e2e-{RUN_ID}")
    logs = tmp_path_factory.mktemp("pipeline")
    web, base = start_web(settings, logs)
    worker = start_worker(settings, logs)
    yield base
    web.stop()
    worker.stop()



# Property tests are bounded in `make test`; `--thorough` multiplies their examples by 20.
THOROUGH = {"factor": 1}


def pytest_addoption(parser):
    parser.addoption("--thorough", action="store_true", help="run property tests with 20x more examples")


def pytest_configure(config):
    if config.getoption("--thorough"):
        THOROUGH["factor"] = 20


def examples(n: int) -> int:
    return n * THOROUGH["factor"]


def pytest_terminal_summary(terminalreporter):
    from tests.test_faults import REPORT, REPORT_NOTES

    if REPORT:
        terminalreporter.section("fault suite")
        for row in REPORT:
            slowest = row.get("slowest_push_seconds")
            terminalreporter.write_line(
                f"{row['case']:<34} sent {row['sent']:>5}  202 {row['202']:>5}  stored {row['stored']:>5}"
                f"  lost {row['lost']}  all stored {row['drain_seconds']:>5.1f} s after the fault ended,"
                f" {row['after_last_push_seconds']:>4.1f} s after the last push;"
                f" slowest push answer {'-' if slowest is None else f'{slowest:.2f} s'}")
        for note in REPORT_NOTES:
            terminalreporter.write_line(note)


def pytest_sessionfinish(session, exitstatus):
    """Last check of the run: no push token in any log a process of the suite wrote
    (gunicorn, Flask, Celery and Pushline's own, error paths included). The token
    is in the URL path, so every log line that names a URL must have redacted it."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(factory, "_basetemp", None) is None:
        return
    leaks = []
    for path in sorted(factory.getbasetemp().rglob("*.log")):
        text = path.read_text(errors="replace")
        for token in (TOKEN, PARIS_TOKEN):
            if token in text:
                line = next(ln for ln in text.splitlines() if token in ln)
                leaks.append(f"{path}: {line[:300]}")
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("push token found in logs", red=True)
            for leak in leaks:
                reporter.write_line(leak)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
