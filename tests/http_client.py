"""A tiny HTTP client on the standard library, so the tests need no extra package."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 10) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    except (ConnectionError, OSError):
        return Response(0, {}, b"")
    finally:
        conn.close()


def get(url: str, **kwargs) -> Response:
    return request("GET", url, **kwargs)


def post_json(url: str, payload, headers: dict[str, str] | None = None) -> Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request("POST", url, body, {"Content-Type": "application/json", **(headers or {})})
