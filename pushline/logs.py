"""Structured logs: one JSON object per line, level from LOG_LEVEL.

Lines about an event carry its `event_key` (and `receipt_id` where known)
as fields, passed with `extra=`.
"""

from __future__ import annotations

import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The push token is in the URL path (iAdvize can only be given a URL). Whatever
# logs a URL, gunicorn's "Error handling request", Flask's "Exception on",
# a traceback, goes through this formatter, which removes it from the whole line.
_TOKEN_IN_PATH = re.compile(r"(/push/)[^\s/?#\"'\\]+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"'\\]+")


def redact(text: str) -> str:
    if "/push/" in text:
        text = _TOKEN_IN_PATH.sub(r"\1<redacted>", text)
    if "earer" in text:
        text = _BEARER.sub(r"\1<redacted>", text)
    return text


class RedactingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def json_formatter() -> JsonFormatter:
    return RedactingJsonFormatter(FORMAT, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
