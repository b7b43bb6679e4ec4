"""Slow clients cannot starve the push endpoint (real sockets, real gunicorn)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests import http_client as http
from tests.conftest import TOKEN, start_web
from tests.helpers import login

pytestmark = pytest.mark.slow

TRICKLERS = 200


def trickle(host: str, port: int, body_too: bool, stop: threading.Event, opened: list) -> None:
    """Headers (or a body) sent a byte a second: the classic slowloris."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError:
        return
    opened.append(sock)
    head = f"POST /push/{TOKEN} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if body_too:
        head += "Content-Length: 5000\r\n\r\n{"
    try:
        sock.sendall(head.encode())
        while not stop.wait(1.0):
            sock.sendall(b" " if body_too else b"X")
    except OSError:
        pass


def test_two_hundred_trickling_clients_leave_pushes_answered_within_a_second(settings, tmp_path):
    web, base = start_web(settings, tmp_path)  # 2 gunicorn workers of 4 threads
    host, port = base.removeprefix("http://").split(":")
    stop, opened = threading.Event(), []
    threads = [threading.Thread(target=trickle, args=(host, int(port), i % 2 == 1, stop, opened), daemon=True)
               for i in range(TRICKLERS)]
    try:
        for t in threads:
            t.start()
        time.sleep(3)  # every trickler has its connection open and is sending
        assert len(opened) >= TRICKLERS * 0.95
        answers = []
        for i in range(8):
            started = time.monotonic()
            resp = http.post_json(f"{base}/push/{TOKEN}", login(8800 + i, "2014-01-01 08:00:00"))
            answers.append((resp.status, round(time.monotonic() - started, 3)))
            time.sleep(0.5)
        assert [s for s, _ in answers] == [202] * 8, answers
        assert max(t for _, t in answers) < 1.0, answers
        assert json.loads(resp.body)["id"]
    finally:
        stop.set()
        for sock in opened:
            sock.close()
        web.stop()
