"""No token in a log line: the formatter every tier uses redacts it from the whole line."""

from __future__ import annotations

import json
import logging
import socket
import time

from pushline.logs import json_formatter, redact
from tests.conftest import TOKEN, start_web


def test_the_formatter_redacts_a_token_anywhere_in_a_line_and_its_traceback():
    record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "Error handling request %s",
                               (f"/push/{TOKEN}?a=1",), None)
    try:
        raise ValueError(f"bad path /push/{TOKEN}/x with Authorization: Bearer {TOKEN}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json_formatter().format(record)
    assert TOKEN not in line
    parsed = json.loads(line)
    assert parsed["message"] == "Error handling request /push/<redacted>?a=1"
    assert "/push/<redacted>/x" in parsed["exc_info"] and "Bearer <redacted>" in parsed["exc_info"]
    assert redact("GET /pushes/x /status") == "GET /pushes/x /status"  # nothing else is touched


def test_gunicorn_at_debug_level_logs_each_request_without_its_token(settings, tmp_path):
    """At DEBUG gunicorn logs every request line, and a request it cannot parse."""
    web, base = start_web(settings, tmp_path, LOG_LEVEL="DEBUG")
    try:
        host, port = base.removeprefix("http://").split(":")
        body = b'{"name": "operator.login"}'
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"POST /push/{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            assert sock.recv(4096).startswith(b"HTTP/1.1 202")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"POST /push/{TOKEN} HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 400")
        time.sleep(0.5)
    finally:
        web.stop()
    text = web.output()
    assert '"message": "POST /push/<redacted>"' in text  # gunicorn's own debug line, redacted
    assert TOKEN not in text
