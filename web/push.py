"""POST /push/<token> and POST /push (Bearer): the ack path.

Authenticate, check the edge, queue the raw body, answer 202 only once Redis
has taken it. The business tables are never touched here.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

import psycopg2
import redis
from flask import Blueprint, Request, Response, g, request

from pushline.config import Token
from pushline.db import Timeout
from pushline.envelope import Envelope
from pushline.spool import spool
from web import services
from web.edge import BadBody, is_json_content_type, parse_body
from web.errors import PushError
from web.metrics import ENQUEUE_REDIS, ENQUEUE_SPOOL, count_push, fallback_in_use

bp = Blueprint("push", __name__)

RETRY_AFTER = {"Retry-After": "5"}


def _source_for(given: str | None, tokens: tuple[Token, ...]) -> str | None:
    """Constant-time match against every active token (several allow rotation)."""
    given_bytes = (given or "").encode()
    match = None
    for token in tokens:
        if hmac.compare_digest(given_bytes, token.secret.encode()) and match is None:
            match = token.source
    return match


def _signed(body: bytes, secret: str, header: str | None) -> bool:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, compared in constant time."""
    scheme, _, given = (header or "").partition("=")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return scheme.strip().lower() == "sha256" and hmac.compare_digest(given.strip().lower().encode(), expected.encode())


def _read_body(req: Request, limit: int) -> bytes:
    length = req.content_length
    if length is not None:
        if length > limit:
            raise PushError(413, f"body is larger than {limit} bytes")
        # The server bounds its input stream to Content-Length; werkzeug's
        # extra wrapper costs more than the read itself.
        return req.environ["wsgi.input"].read(length)
    # Chunked bodies have no length: read at most one byte past the limit.
    body = req.stream.read(limit + 1)
    if len(body) > limit:
        raise PushError(413, f"body is larger than {limit} bytes")
    return body


def _accepted(receipt_id: str) -> Response:
    return Response(b'{"id":"%s"}\n' % receipt_id.encode(), 202, mimetype="application/json")


@bp.post("/push/<token>")
@bp.post("/push", defaults={"token": None})
def push(token: str | None):
    req = request._get_current_object()  # one proxy lookup instead of one per attribute
    settings = services.settings()
    headers = req.headers
    if token is None:
        scheme, _, bearer = headers.get("Authorization", "").partition(" ")
        token = bearer.strip() if scheme.lower() == "bearer" else None
    source = _source_for(token, settings.tokens)
    g.source = source or "unknown"
    if source is None:
        raise PushError(401, "missing or invalid push token")
    if not is_json_content_type(headers.get("Content-Type")):
        raise PushError(415, "Content-Type must be application/json: XML and form-encoded bodies are not"
                             " supported; choose JSON in the webhook's settings")
    body = _read_body(req, settings.max_body_bytes)
    secret = settings.signing_secrets.get(source)
    if secret is not None and not _signed(body, secret, headers.get("X-iAdvize-Signature")):
        raise PushError(401, "missing or invalid X-iAdvize-Signature")
    try:
        parse_body(body)
    except BadBody as exc:
        raise PushError(400, str(exc)) from None

    receipt_id = uuid.uuid4().hex
    envelope = Envelope(receipt_id, source, time.time(), body).encode()
    breaker = services.breaker()
    if breaker.closed():
        started = time.perf_counter()
        try:
            depth = services.queue().push(envelope, settings.queue_high_water, settings.redis_min_replicas)
        except redis.RedisError:
            # Down, paused, or (NotReplicated) without the replicas it must have: the
            # spool takes the event, the same receipt, so a copy in Redis counts once.
            breaker.trip()
        else:
            if depth < 0:
                raise PushError(503, "event queue is full; retry later", RETRY_AFTER)
            ENQUEUE_REDIS.observe(time.perf_counter() - started)
            fallback_in_use(False)
            return _accepted(receipt_id)
    started = time.perf_counter()
    _spool(envelope)
    ENQUEUE_SPOOL.observe(time.perf_counter() - started)
    fallback_in_use(True)
    return _accepted(receipt_id)


@bp.after_request
def count(response):
    count_push(response.status_code, g.get("source", "unknown"))
    return response


def _spool(envelope: bytes) -> None:
    """Redis is unreachable: commit the event to the PostgreSQL spool instead.

    A session broken since its last use gets one fresh retry; a server that
    did not answer in time gets none (a second wait would double the push's)."""
    for attempt in (1, 2):
        try:
            spool(services.spool_connection(), envelope)
            return
        except Timeout:
            services.drop_spool_connection()
            break
        except psycopg2.Error:
            services.drop_spool_connection()
            if attempt == 2:
                break
    raise PushError(503, "event queue is unavailable; retry later", RETRY_AFTER)
