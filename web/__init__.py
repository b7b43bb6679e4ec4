"""The web tier: authenticate, shape-check, queue, answer. Nothing else."""

from __future__ import annotations

import re

from flask import Flask, request

from pushline.config import Settings

_TOKEN_IN_PATH = re.compile(r"(/push/)[^/?]+")


class PushlineFlask(Flask):
    def log_exception(self, exc_info) -> None:
        """Flask logs the request path with an unhandled error: the token is in it."""
        path = _TOKEN_IN_PATH.sub(r"\1<redacted>", request.path)
        self.logger.error("Exception on %s [%s]", path, request.method, exc_info=exc_info)


def create_app(settings: Settings | None = None) -> Flask:
    """App factory; tests pass their own settings, production reads the environment."""
    settings = settings or Settings.from_env()
    app = PushlineFlask(__name__)
    app.config["PUSHLINE"] = settings

    from web import errors, health, metrics, push, status

    errors.register(app)
    if settings.internal_port is not None:
        _split_listeners(app, settings.internal_port)
    app.register_blueprint(push.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(status.bp)
    return app


# What ops read: on the internal listener only, when INTERNAL_PORT is set.
INTERNAL_ENDPOINTS = frozenset({"metrics.metrics", "status.page", "status.figures"})
EVERYWHERE = frozenset({"health.healthz", "health.readyz"})  # probes may use either


def _split_listeners(app: Flask, internal_port: int) -> None:
    """gunicorn listens on PORT and INTERNAL_PORT; SERVER_PORT says which one a
    request came through (the listening socket's own port, not the Host header).
    The push port serves pushes, never the figures; the internal port the
    figures, never pushes."""
    from werkzeug.exceptions import NotFound

    internal = str(internal_port)

    @app.before_request
    def listener_guard():
        endpoint = request.endpoint
        if endpoint in EVERYWHERE:
            return
        if (endpoint in INTERNAL_ENDPOINTS) != (request.environ.get("SERVER_PORT") == internal):
            raise NotFound()
