"""``python -m tests.bench``: jobq's end-to-end throughput and submit latency, measured against
Celery on the same RabbitMQ in the same run (docs/design.md §7). A benchmark that prints a table, not a test.

Modules: ``jobq_side`` (api + workers, batch and single submits), ``celery_side`` and
``celery_app`` (the baseline), ``report`` (the table), ``__main__`` (arguments and the
interleaved runs); the subprocesses it starts, and always stops, are ``tests.procs``.
"""

from tests.procs import ProcessDied


class BenchError(ProcessDied):
    """The benchmark could not complete a measurement."""
