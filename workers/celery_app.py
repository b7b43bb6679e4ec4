"""The Celery application: `celery -A workers.celery_app worker`.

Bound to the same settings as the web tier. Creating it connects to nothing;
the drain loop starts with the worker (as a bootstep) and stops with it: a
warm shutdown (SIGTERM) finishes and acknowledges the batch in hand.
"""

from __future__ import annotations

import threading

from celery import Celery, bootsteps, signals

from pushline.config import Settings


class DrainStep(bootsteps.StartStopStep):
    """Runs workers.drain.DrainLoop in a thread of the worker process."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.loop = None
        self.thread = None
        self.heartbeat = None

    def start(self, worker):
        from workers.drain import DrainLoop, Heartbeat
        from workers.handlers import registry_with_handlers

        settings: Settings = worker.app.conf.pushline_settings
        settings.require("DATABASE_URL", "REDIS_URL")
        self.loop = DrainLoop(settings, registry_with_handlers(), name=worker.hostname)
        self.heartbeat = Heartbeat(self.loop, settings.worker_stall_seconds)
        self.thread = threading.Thread(target=self._run, name="pushline-drain", daemon=True)
        self.thread.start()
        self.heartbeat.start()

    def _run(self):
        from workers.drain import die

        try:
            self.loop.run()
        except BaseException as exc:  # the loop never ends by itself but on stop()
            die(f"drain loop died: {type(exc).__name__}: {exc}", exc_info=True)

    def stop(self, worker):
        if self.loop is not None:
            self.loop.stop()
            self.thread.join(timeout=60)
            self.heartbeat.stop()

    shutdown = stop


@signals.setup_logging.connect
def _json_logs(loglevel=None, **kwargs):
    """Our JSON logs instead of Celery's text ones (connecting this signal tells Celery so)."""
    from pushline.logs import configure

    configure(Settings.from_env().log_level)


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("pushline", broker=settings.redis_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        pushline_settings=settings,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"global_keyprefix": f"{settings.queue_prefix}:celery:"},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    app.steps["worker"].add(DrainStep)
    return app


app = make_celery()
