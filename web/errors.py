"""Every error is JSON: {"error": "<readable reason>"}."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


class PushError(HTTPException):
    """An HTTP error with its own status, reason and headers."""

    def __init__(self, code: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.code = code
        self.extra_headers = headers or {}


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def as_json(exc: HTTPException):
        response = jsonify(error=exc.description or exc.name)
        response.status_code = exc.code or 500
        for name, value in getattr(exc, "extra_headers", {}).items():
            response.headers[name] = value
        return response
