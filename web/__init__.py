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
    app.register_blueprint(push.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(status.bp)
    return app
