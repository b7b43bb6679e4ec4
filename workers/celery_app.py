"""The Celery application: `celery -A workers.celery_app worker|beat|inspect|flower`.

Bound to the same settings as the web tier; creating it connects to nothing.
A worker runs an ordinary pool (prefork, `-c N`) that executes one
`pushline.store_batch` task per claimed batch, and in its main process a
dispatcher thread (a bootstep) that claims the batches and sends those tasks
(workers.dispatch). Beat schedules the housekeeping. `celery inspect drain`
shows each worker's drain state; `celery inspect stats` counts the tasks;
Flower lists them (task events are on).
"""

from __future__ import annotations

import gc
import logging
import threading

from celery import Celery, bootsteps, signals
from celery.worker.control import inspect_command
from kombu import Queue

from pushline.celery_client import BATCHES, HOUSEKEEPING, broker_transport_options, broker_url
from pushline.config import Settings
from pushline.kombu_redis import transport_for
from workers import housekeeping


def time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) for a batch: below the lease, so that a task stuck past them
    is ended by Celery while its batch is still its own to give back."""
    return settings.lease_seconds * 0.5, settings.lease_seconds * 0.75


class DispatchStep(bootsteps.StartStopStep):
    """Runs workers.dispatch.Dispatcher in a thread of the worker's main process."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.dispatcher = None
        self.thread = None
        self.heartbeat = None

    def start(self, worker):
        from workers.dispatch import Dispatcher, Heartbeat
        from workers.handlers import registry_with_handlers

        settings: Settings = worker.app.conf.pushline_settings
        settings.require("DATABASE_URL", "REDIS_URL")
        store_batch = worker.app.tasks["pushline.store_batch"]

        def send(batch_id: str, kind: str, dispatcher: str) -> None:
            store_batch.apply_async((batch_id, kind, dispatcher), retry=False)

        concurrency = worker.concurrency or 1
        self.dispatcher = Dispatcher(settings, registry_with_handlers(), name=worker.hostname,
                                     capacity=2 * concurrency, send=send,
                                     pool=worker.pool_cls.__module__.rsplit(".", 1)[-1], concurrency=concurrency)
        _DISPATCHERS[worker.hostname] = self.dispatcher
        self.heartbeat = Heartbeat(self.dispatcher, settings.worker_stall_seconds)
        self.thread = threading.Thread(target=self._run, name="pushline-dispatcher", daemon=True)
        self.thread.start()
        self.heartbeat.start()

    def _run(self):
        from workers.dispatch import die

        try:
            self.dispatcher.run()
        except BaseException as exc:  # the loop never ends by itself but on stop()
            die(f"dispatcher died: {type(exc).__name__}: {exc}", exc_info=True)

    def close(self, worker):
        """Celery begins to stop the worker (every step is closed before any stops).

        With a failure exit code and no signal asking for it, that is because its
        consumer died ("Unrecoverable error" above: e.g. a pool process's result it
        could not read, left mid-message in its pipe when the task's soft time limit
        came while the main process was reconnecting to the broker). Celery's warm
        shutdown may then wait on that pipe forever, processing nothing: the worker
        exits at once, non-zero, so that its supervisor restarts it. The batches
        its pool processes had in hand are given back without a strike (their
        transactions die with the processes: we ended them, not their events), as
        are those whose messages it held; the others come back when their leases end.
        """
        if worker.exitcode and not _SHUTDOWN_ASKED.is_set():
            from workers.dispatch import die

            held = _batches_here(started=True) + _batches_here(started=False)
            if self.dispatcher is not None:
                self.dispatcher.stop()
                self.thread.join(timeout=5)  # it gives back the batches no task began
            die(f"Celery's consumer died (the \"Unrecoverable error\" above; exit code {worker.exitcode})",
                before_exit=lambda: self._give_back(held))

    def stop(self, worker):
        if self.dispatcher is not None:
            # Messages this worker took and will not run (two a pool process are taken
            # ahead) are not returned to the broker (no ack emulation): their batches,
            # whichever dispatcher sent them, go back now instead of after their lease.
            self._give_back(_batches_here(started=False))
            self.dispatcher.stop()
            self.thread.join(timeout=30)
            self.heartbeat.stop()
            self.dispatcher = None

    def _give_back(self, batch_ids: list[str]) -> None:
        from pushline.queue import Batch

        consumer = self.dispatcher.consumer if self.dispatcher is not None else None
        if consumer is None:
            return
        for batch_id in batch_ids:
            consumer.give_back(Batch(batch_id, []), strike=False)

    shutdown = stop


_SHUTDOWN_ASKED = threading.Event()  # a signal (SIGTERM, SIGINT, SIGQUIT) asked this worker to stop


def _batches_here(started: bool) -> list[str]:
    """Batch ids of this worker's store_batch requests: those a pool process took
    (`started`), or those it holds that none took yet."""
    from celery.worker import state

    active = {r.id for r in list(state.active_requests)}
    requests = list(state.active_requests) if started else [r for r in list(state.reserved_requests)
                                                          if r.id not in active]
    return [r.args[0] for r in requests if r.name == "pushline.store_batch" and r.args]


@signals.worker_shutting_down.connect
def _shutdown_asked(**kwargs):
    _SHUTDOWN_ASKED.set()


_DISPATCHERS: dict[str, object] = {}


@inspect_command(name="drain")
def drain(state):
    """`celery -A workers.celery_app inspect drain`: this worker's drain state."""
    dispatcher = _DISPATCHERS.get(state.consumer.hostname)
    return dispatcher.state() if dispatcher is not None else {"error": "no dispatcher in this worker"}


@signals.setup_logging.connect
def _json_logs(loglevel=None, **kwargs):
    """Our JSON logs instead of Celery's text ones (connecting this signal tells Celery so)."""
    from pushline.logs import configure

    level = Settings.from_env().log_level
    configure(level)
    if level != "DEBUG":
        # A line per task received and succeeded, and per beat tick (the spool forward
        # runs every second), would drown what matters: Flower and `celery inspect`
        # show the tasks, and failures are still logged.
        for name in ("celery.beat", "celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.beat_init.connect
def _duties_at_start(sender=None, **kwargs):
    """Beat's interval schedules first fire one period after it starts: the
    partition check (every 10 minutes) is sent at once instead."""
    sender.app.send_task("pushline.roll_partitions", queue=HOUSEKEEPING, expires=600)


@signals.worker_process_init.connect
def _pool_process_init(**kwargs):
    # What was imported before the fork lives as long as the process: out of the
    # collector's sight, it is not rescanned by every collection batches trigger.
    gc.freeze()


def beat_schedule(settings: Settings) -> dict:
    def every(seconds: float, task: str) -> dict:
        # A tick that waited longer than its period is useless: the next one comes.
        return {"task": task, "schedule": seconds, "options": {"queue": HOUSEKEEPING, "expires": seconds * 2}}

    schedule = {
        "sweep-leases": every(housekeeping.SWEEP_EVERY, "pushline.sweep_leases"),
        "forward-spool": every(housekeeping.FORWARD_EVERY, "pushline.forward_spool"),
        "roll-partitions": every(housekeeping.PARTITIONS_EVERY, "pushline.roll_partitions"),
    }
    if settings.retention_days:
        # The days travel with the task: beat's PUSHLINE_RETENTION_DAYS is the one setting.
        schedule["apply-retention"] = {**every(housekeeping.RETENTION_EVERY, "pushline.apply_retention"),
                                       "kwargs": {"days": settings.retention_days}}
    return schedule


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    soft, hard = time_limits(settings)
    broker = broker_url(settings)
    app = Celery("pushline", broker=broker, include=["workers.tasks"])
    app.conf.update(
        pushline_settings=settings,
        broker_transport=transport_for(broker),  # kombu's, one client per channel (pushline.kombu_redis)
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=4,
        broker_transport_options=broker_transport_options(settings),
        task_default_queue=BATCHES,
        task_queues=(Queue(BATCHES), Queue(HOUSEKEEPING)),  # a worker consumes both
        task_routes={"pushline.store_batch": {"queue": BATCHES}, "pushline.replay": {"queue": HOUSEKEEPING},
                     "pushline.prune": {"queue": HOUSEKEEPING}, "pushline.sweep_leases": {"queue": HOUSEKEEPING},
                     "pushline.forward_spool": {"queue": HOUSEKEEPING},
                     "pushline.roll_partitions": {"queue": HOUSEKEEPING},
                     "pushline.apply_retention": {"queue": HOUSEKEEPING}},
        task_annotations={"pushline.store_batch": {"soft_time_limit": soft, "time_limit": hard}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        # Two messages a pool process: the next batch's message is in the worker when a task
        # ends, not one BRPOP away (the pool waited 3.3 -> 2.5 ms between batches). The dispatcher
        # keeps two batches in flight a process; a message lost with its worker costs one lease.
        worker_prefetch_multiplier=2,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # Flower lists the tasks
        task_send_sent_event=True,
        # The lease, not the connection, decides who owns a batch: a task running
        # while the broker connection blips goes on and acknowledges by lease.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        beat_schedule=beat_schedule(settings),
    )
    app.steps["worker"].add(DispatchStep)
    return app


app = make_celery()
