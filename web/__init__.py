"""The web tier: authenticate, shape-check, queue, answer. Nothing else."""

from __future__ import annotations

from flask import Flask

from pushline.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """App factory; tests pass their own settings, production reads the environment."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["PUSHLINE"] = settings

    from web import errors, health, metrics, push

    errors.register(app)
    app.register_blueprint(push.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    return app
