"""`make run` as a newcomer runs it: embedded servers, a printed URL, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psycopg2
import pytest

from tests import http_client as http
from tests.conftest import ROOT, free_port, wait_for
from tests.test_schemas import fixture

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def args(pid: int) -> list[bytes]:
    return cmdline(pid).split(b"\0")


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_make_run_serves_a_push_and_ctrl_c_leaves_no_process(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "PUSH_TOKENS", "MAKEFLAGS", "MFLAGS")}
    env.update(PUSHLINE_VAR=str(tmp_path / "var"), PORT=str(free_port()),
               PUSHLINE_PG_PORT=str(free_port()), PUSHLINE_REDIS_PORT=str(free_port()))
    out = tmp_path / "make-run.log"
    with open(out, "wb") as log:
        make = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        line = wait_for(lambda: next((ln for ln in out.read_text().splitlines() if "Callback URL:" in ln), None)
                        or (make.poll() is not None and pytest.fail(out.read_text())),
                        timeout=240, what="make run to print the callback URL")
        url = line.split("Callback URL:")[1].strip()
        db_line = next(ln for ln in out.read_text().splitlines() if "Database (psql):" in ln)
        db_url = db_line.split("Database (psql):")[1].strip()
        token_file = tmp_path / "var" / "push-token"
        assert url.endswith("/push/" + token_file.read_text().strip())

        resp = http.post_json(url, fixture("operator.login"))
        assert resp.status == 202, resp.body

        def stored():
            with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT name, status FROM events")
                return cur.fetchall()

        assert wait_for(stored, timeout=30, what="the event row") == [("operator.login", "processed")]

        # `make stats` beside it, with no URLs set: it finds the embedded servers.
        stats = subprocess.run(["make", "-s", "stats"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120)
        assert stats.returncode == 0, stats.stderr
        report = json.loads(stats.stdout[stats.stdout.index("{"):])
        assert report["events"] == [{"name": "operator.login", "status": "processed", "events": 1}]

        # One Celery worker (its main process; pool processes are its children) and one beat.
        celery = [p for p in descendants(make.pid) if b"workers.celery_app" in args(p) and alive(p)]
        [worker] = [p for p in celery if b"worker" in args(p) and parent(p) not in celery]
        [beat] = [p for p in celery if b"beat" in args(p)]
        pool = [p for p in celery if parent(p) == worker]
        assert len(pool) == os.cpu_count()  # prefork, one process per CPU by default
        text = out.read_text()
        # The banner tells the truth about the pool; beat is sending the housekeeping.
        assert f"concurrency: {os.cpu_count()} (prefork)" in text and "(solo)" not in text

        def beat_did_its_duties():
            stats = subprocess.run(["make", "-s", "stats"], cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=120)
            ago = json.loads(stats.stdout[stats.stdout.index("{"):])["housekeeping_seconds_ago"]
            return {"sweep_leases", "forward_spool", "roll_partitions"} <= set(ago) and ago["sweep_leases"] < 15
        wait_for(beat_did_its_duties, timeout=40, interval=2, what="beat's duties to run")
        # The newcomer's console: no psql table, no line per task or per beat tick.
        assert "setval" not in text and "Sending due task" not in out.read_text()
        assert "succeeded in" not in out.read_text()
        # A worker that exits (as it does when it cannot go on) is started again.
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: "worker exited with -9; restarting it" in out.read_text(), timeout=30,
                 what="make run to restart the worker")
        assert http.post_json(url, fixture("operator.logout")).status == 202
        wait_for(lambda: len(stored()) == 2, timeout=60, what="the restarted worker to store an event")
        assert "Pushline is running" in out.read_text() and "setval" not in out.read_text().split("Pushline")[0]
        started = descendants(make.pid)
        assert len(started) >= 6  # supervisor, postgres, redis, gunicorn, worker, beat (and their children)
        assert beat in started
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        make.wait(timeout=120)
        wait_for(lambda: not any(alive(pid) for pid in started), timeout=30, what="every process to exit")
        assert "pushline: stopped" in out.read_text()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        for pid in descendants(make.pid):
            os.kill(pid, signal.SIGKILL)
