"""GET /metrics: names, labels, and figures that move with what happened."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import http_client as http
from tests.conftest import ROOT, TOKEN, wait_for
from tests.helpers import conversation, drain, enqueue, login
from tests.test_http import LOGIN
from web import create_app
from workers.consumer import Consumer
from workers.handlers import registry_with_handlers


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape(client) -> tuple[str, dict]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = resp.get_data(as_text=True)
    return text, samples(text)


def pushes(s: dict, status: str, source: str) -> float:
    return s.get(("pushline_pushes_total", (("source", source), ("status", status))), 0.0)


@pytest.fixture
def client(settings, rq, db):
    return create_app(settings).test_client()


def test_pushes_are_counted_by_status_and_source_never_by_token(client, rq):
    _, before = scrape(client)
    for _ in range(3):
        client.post(f"/push/{TOKEN}", data=json.dumps(LOGIN), content_type="application/json")
    client.post(f"/push/{TOKEN}", data=b"{", content_type="application/json")
    client.post("/push/not-a-token", data=json.dumps(LOGIN), content_type="application/json")
    text, after = scrape(client)
    assert pushes(after, "202", "default") - pushes(before, "202", "default") == 3
    assert pushes(after, "400", "default") - pushes(before, "400", "default") == 1
    assert pushes(after, "401", "unknown") - pushes(before, "401", "unknown") == 1
    assert TOKEN not in text and "not-a-token" not in text


def test_enqueue_latency_histogram_and_queue_depth(client, settings, rq):
    _, before = scrape(client)
    client.post(f"/push/{TOKEN}", data=json.dumps(LOGIN), content_type="application/json")
    _, after = scrape(client)
    key = ("pushline_enqueue_seconds_count", (("store", "redis"),))
    assert after[key] - before.get(key, 0) == 1
    assert after[("pushline_queue_depth", ())] == rq.llen(f"{settings.queue_prefix}:incoming") == 1
    assert after[("pushline_redis_up", ())] == 1
    assert after[("pushline_fallback_active", ())] == 0


def test_worker_figures_by_name_and_status_and_lag(client, settings, db, rq):
    loop = Consumer(settings, registry_with_handlers(), name="metrics-worker")
    _, before = scrape(client)
    enqueue(loop.queue, login(1, "2014-01-01 09:00:00"), login(1, "2014-01-01 09:00:00"),
            conversation("start", 1, "2014-01-01 09:00:00", type_="fax"), {"name": "x.y"})
    drain(loop)
    loop.close()
    _, after = scrape(client)

    def delta(name, status):
        key = ("pushline_worker_events_total", (("name", name), ("status", status)))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("operator.login", "processed") == 1  # the duplicate is not a second event
    assert delta("conversation.start", "rejected") == 1
    assert delta("x.y", "unhandled") == 1
    assert after[("pushline_worker_batch_items_total", ())] - before.get(("pushline_worker_batch_items_total", ()), 0) \
        == 4
    lag = after[("pushline_worker_lag_seconds", (("worker", "metrics-worker"),))]
    assert 0 <= lag < 60


@pytest.mark.slow
def test_metrics_through_gunicorn_add_up_across_processes(pipeline, db):
    before = samples(http.get(f"{pipeline}/metrics").body.decode())
    for i in range(12):
        assert http.post_json(f"{pipeline}/push/{TOKEN}", login(50 + i, "2014-01-01 09:00:00")).status == 202
    wait_for(lambda: samples(http.get(f"{pipeline}/metrics").body.decode()).get(
        ("pushline_worker_events_total", (("name", "operator.login"), ("status", "processed"))), 0)
        - before.get(("pushline_worker_events_total", (("name", "operator.login"), ("status", "processed"))), 0)
        >= 12, what="worker figures")
    after = samples(http.get(f"{pipeline}/metrics").body.decode())
    assert pushes(after, "202", "default") - pushes(before, "202", "default") == 12


def test_every_documented_metric_is_exposed_with_its_type(client):
    resp = client.get("/metrics")
    families = {f.name: f.type for f in text_string_to_metric_families(resp.get_data(as_text=True))}
    expected = {
        "pushline_pushes": "counter", "pushline_enqueue_seconds": "histogram", "pushline_fallback_active": "gauge",
        "pushline_redis_up": "gauge", "pushline_queue_depth": "gauge", "pushline_queue_claimed_batches": "gauge",
        "pushline_worker_events": "counter", "pushline_worker_batches": "counter",
        "pushline_worker_batch_items": "counter", "pushline_worker_retries": "counter",
        "pushline_worker_reclaimed": "counter", "pushline_worker_lag_seconds": "gauge",
    }
    assert {name: families.get(name) for name in expected} == expected
    readme = (ROOT / "README.md").read_text()
    for name in expected:
        assert f"`{name}" in readme, f"{name} is not documented in the README"
