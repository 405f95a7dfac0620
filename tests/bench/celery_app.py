"""The Celery peers: one no-op task on a durable queue of the same RabbitMQ, acks late,
persistent messages, JSON; lean (no result backend, results ignored) or with a PostgreSQL
result backend (every result stored). ``celery -A tests.bench.celery_app worker`` builds its
app from the environment the bench sets (``JOBQBENCH_CELERY_*``); the bench publishes
through an app of its own from ``make_app``. Finished tasks are counted in ``task_postrun``
(after the result is stored) for the bench to see the drain (``counts``)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun

from tests.bench.counts import FinishedCounter

TASK = "jobqbench.noop"


def noop() -> None:
    """Does nothing, like jobq's built-in ``noop``."""


def make_app(broker_url: str, queue: str, result_backend: str | None) -> Any:
    """An app whose ``noop`` task goes to ``queue``; ``result_backend`` a ``db+postgresql…``
    URL, or ``None`` for no results at all."""
    app = Celery("jobqbench", broker=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_ignore_result=result_backend is None,
        result_backend=result_backend,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_default_delivery_mode="persistent",
        worker_prefetch_multiplier=4,  # Celery's default, stated
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=TASK)(noop)
    return app


app = make_app(
    os.environ.get("JOBQBENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("JOBQBENCH_CELERY_QUEUE", "jobqbench.celery"),
    os.environ.get("JOBQBENCH_CELERY_BACKEND") or None,
)

_counter = FinishedCounter()


def _on_postrun(**_: Any) -> None:
    _counter.bump()


task_postrun.connect(_on_postrun, weak=False)
