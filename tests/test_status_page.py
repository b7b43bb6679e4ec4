"""GET /status in a real headless Chromium, against a running pipeline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import http_client as http
from tests.conftest import ROOT, TOKEN, query, wait_for
from tests.helpers import conversation, login
from web import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=4000", "--window-size=1280,900"]


def test_status_json_has_the_figures(settings, db, rq):
    client = create_app(settings).test_client()
    data = client.get("/status.json").get_json()
    assert data["redis"] == "up" and data["database"] == "up"
    assert data["queue_depth"] == 0 and data["rejected"] == 0
    assert client.get("/status").status_code == 200


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed (apt-get install chromium)")
def test_status_page_in_chromium_shows_live_figures(pipeline, db, tmp_path):
    for i in range(5):
        assert http.post_json(f"{pipeline}/push/{TOKEN}", login(100 + i, "2014-01-01 09:00:00")).status == 202
    assert http.post_json(f"{pipeline}/push/{TOKEN}",
                          conversation("start", 9, "2014-01-01 09:00:00", type_="fax")).status == 202
    for i, kind in enumerate(("chat", "call", "chat")):
        assert http.post_json(f"{pipeline}/push/{TOKEN}",
                              conversation("start", 20 + i, f"2014-01-0{1 + i} 09:00:00", type_=kind)).status == 202
    wait_for(lambda: query(db, "SELECT count(*) FROM events")[0][0] == 9, what="events stored")

    dom = chromium(["--dump-dom", f"{pipeline}/status"], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r'id="rejected">1<', html), html[:3000]
    assert re.search(r'id="depth">0<', html)
    assert 'id="redis">up<' in html and 'id="database">up<' in html
    assert "parameters.type: Must be one of" in html  # the latest rejection's reason
    per_minute, per_day = html.split('id="per-minute"')[1], html.split('id="per-day"')[1]
    assert "<rect" in per_minute.split("</svg>")[0] and "<rect" in per_day.split("</svg>")[0]  # both charts drawn
    assert "call" in html and "chat" in html
    console_errors = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and ("rror" in ln or "Uncaught" in ln)]
    assert console_errors == []

    shot = ROOT / "var" / "status-page.png"
    shot.parent.mkdir(exist_ok=True)
    taken = chromium([f"--screenshot={shot}", f"{pipeline}/status"], tmp_path / "profile-shot")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000


def test_status_json_shows_a_stall_the_spool_and_dead_letters(settings, db, rq, monkeypatch):
    """The oldest pending event counts the spool and the dead letters; a silent worker is flagged."""
    import time

    from web import services

    monkeypatch.setattr(services, "FIGURES_CACHE_SECONDS", 0.0)  # each request reads afresh

    from pushline.envelope import Envelope
    from pushline.queue import EventQueue
    from pushline.workerstats import WorkerStats
    from tests.conftest import make_settings

    strict = make_settings(settings.database_url, settings.redis_url, PUSHLINE_QUEUE_PREFIX=settings.queue_prefix,
                           PUSHLINE_WORKER_STALL_SECONDS="30")
    client = create_app(strict).test_client()
    queue = EventQueue(rq, settings.queue_prefix)
    queue.push(Envelope("queued", "default", time.time() - 100, b"{}").encode(), high_water=10**9)
    rq.rpush(queue.dead_letters, Envelope("parked", "default", time.time() - 150, b"{}").encode())
    stats = WorkerStats(rq, settings.queue_prefix)
    stats.beat("stuck@test", {"last_progress": time.time() - 90, "beat": time.time()})
    stats.beat("busy@test", {"last_progress": time.time() - 2, "beat": time.time()})
    data = client.get("/status.json").get_json()
    assert 150 <= data["oldest_pending_seconds"] < 160 and data["dead_letters"] == 1
    assert {w["name"]: w["stalled"] for w in data["workers"]} == {"stuck@test": True, "busy@test": False}
    query(db, "INSERT INTO spool (item, spooled_at) VALUES ('x', now() - interval '400 seconds') RETURNING id")
    data = client.get("/status.json").get_json()
    assert 400 <= data["oldest_pending_seconds"] < 410 and data["oldest_pending_includes_spool"]


def test_status_json_shows_both_formats(settings, db, rq):
    from tests.helpers import closed, drain, enqueue, pushed
    from workers.consumer import Consumer
    from workers.handlers import registry_with_handlers

    loop = Consumer(settings, registry_with_handlers(), name="status-formats")
    cid = "8f7d2c1e-0000-4000-8000-000000000001"
    enqueue(loop.queue, conversation("start", 1, "2014-01-01 09:00:00", type_="call"),
            conversation("start", 2, "2014-01-01 10:00:00", type_="call"), login(1, "2014-01-01 09:00:00"),
            pushed(cid, 7, "2024-03-05T09:00:00Z", channel="WHATSAPP"), pushed(cid, 8, "2024-03-05T09:05:00Z",
                                                                            channel="WHATSAPP"),
            closed(cid, [7, 8], "2024-03-05T09:30:00Z", channel="WHATSAPP"))
    drain(loop)
    loop.close()
    data = create_app(settings).test_client().get("/status.json").get_json()
    per_minute = {(r["name"], r["format"]): r["events"] for r in data["events_per_minute"]}
    assert per_minute == {("conversation.start", "push-api"): 2, ("operator.login", "push-api"): 1,
                          ("v2.conversation.pushed", "webhook"): 2, ("v2.conversation.closed", "webhook"): 1}
    assert data["conversations_per_day"] == [
        {"day": "2014-01-01", "format": "push-api", "type": "call", "series": "call", "conversations": 2},
        {"day": "2024-03-05", "format": "webhook", "channel": "WHATSAPP", "series": "WHATSAPP", "conversations": 1}]


def test_status_figures_come_from_one_session_and_a_short_cache(settings, db, rq, monkeypatch):
    from web import services

    sql = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pushline-web-status'"
           " AND datname = current_database()")
    [(before,)] = query(db, sql)  # other tests' apps in this process keep theirs
    app = create_app(settings)
    client = app.test_client()
    assert client.get("/status.json").get_json()["rejected"] == 0
    db.cursor().execute("""INSERT INTO events (receipt_ids, event_key, source, name, received_at, payload, status,
                                              error)
                           VALUES (ARRAY['r1'], gen_random_uuid(), 'default', 'x', now(), '{}', 'rejected',
                                   'x: bad')""")
    assert client.get("/status.json").get_json()["rejected"] == 0  # within the cache period: not asked again
    monkeypatch.setattr(services, "FIGURES_CACHE_SECONDS", 0.0)
    assert client.get("/status.json").get_json()["rejected"] == 1
    assert client.get("/metrics").status_code == 200
    # Every request of this app used the same one (sessions of other apps may close meanwhile).
    [(after,)] = query(db, sql)
    assert after <= before + 1
    mine = app.extensions["pushline.status"].conn.get_backend_pid()
    assert query(db, "SELECT application_name FROM pg_stat_activity WHERE pid = %s", mine) == [
        ("pushline-web-status",)]


def test_a_far_future_conversation_does_not_hide_the_real_days(settings, db, rq):
    from tests.helpers import drain, enqueue, pushed
    from workers.consumer import Consumer
    from workers.handlers import registry_with_handlers

    loop = Consumer(settings, registry_with_handlers(), name="status-outlier")
    enqueue(loop.queue, pushed("c-real", 7, "2024-03-05T09:00:00Z"), pushed("c-real-2", 7, "2024-03-04T09:00:00Z"),
            pushed("c-absurd", 7, "9999-12-31T12:00:00Z"))
    drain(loop)
    loop.close()
    data = create_app(settings).test_client().get("/status.json").get_json()
    assert data["database"] == "up"
    assert [(r["day"], r["conversations"]) for r in data["conversations_per_day"]] == [
        ("2024-03-04", 1), ("2024-03-05", 1)]
