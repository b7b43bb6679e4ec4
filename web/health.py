from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify

from web import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    try:
        services.queue().redis.ping()
    except redis.RedisError:
        return jsonify(error="redis is not answering"), 503
    if not services.database_answers():
        return jsonify(error="postgresql is not answering"), 503
    return jsonify(status="ready")


@bp.get("/openapi.json")
def openapi():
    from web.openapi import DOCUMENT

    return current_app.response_class(DOCUMENT.read_bytes(), mimetype="application/json")
