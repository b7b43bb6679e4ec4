"""gunicorn settings for the web tier (`pushline web`)."""

import multiprocessing
import os
import re

from gunicorn.glogging import Logger

workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
# The asgi worker reads requests on an event loop: a client that trickles its
# headers or body costs a coroutine, not a thread, so slow clients cannot starve
# the pushes (web/asgi.py runs the Flask app in WEB_THREADS threads per process
# once a body is whole). Connections stay alive between pushes.
worker_class = "asgi"
asgi_loop = "asyncio"  # uvloop measured no faster here: the request's time is in the parser and the app
# gunicorn_h1c's C parser (requirements.txt) when it is installed, else gunicorn's Python one.
http_parser = "auto"
# SIGTERM: stop accepting, finish in-flight requests, then exit.
graceful_timeout = 30
timeout = 30
# Off by default: at high volume a line per push costs a quarter of the ack path's
# throughput, and /metrics counts pushes by status and source. PUSHLINE_ACCESS_LOG=1 turns it on.
_ACCESS_LOG = os.environ.get("PUSHLINE_ACCESS_LOG", "0") == "1"
accesslog = "-" if _ACCESS_LOG else None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'

_TOKEN_IN_PATH = re.compile(r"(/push/)[^\s/?]+")


class RedactingLogger(Logger):
    """The push token is in the URL path: never write it to a log."""

    def access(self, resp, req, environ, request_time):
        # gunicorn logs access whenever logconfig_dict is set, even with accesslog = None.
        if _ACCESS_LOG:
            super().access(resp, req, environ, request_time)

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "R"):
            if key in atoms and isinstance(atoms[key], str):
                atoms[key] = _TOKEN_IN_PATH.sub(r"\1<redacted>", atoms[key])
        return atoms


logger_class = RedactingLogger

# One JSON object per line for gunicorn's own logs, the access log and the app's.
_level = os.environ.get("LOG_LEVEL", "INFO").upper()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "pushline.logs.json_formatter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
    },
    "root": {"level": _level, "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": _level, "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
    },
}


def on_starting(server):
    """prometheus_client multiprocess mode: one fresh directory per master."""
    import tempfile

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pushline-metrics-")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
