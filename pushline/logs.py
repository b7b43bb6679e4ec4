"""Structured logs: one JSON object per line, level from LOG_LEVEL.

Lines about an event carry its `event_key` (and `receipt_id` where known)
as fields, passed with `extra=`.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def json_formatter() -> JsonFormatter:
    return JsonFormatter(FORMAT, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
