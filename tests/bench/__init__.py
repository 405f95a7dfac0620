"""``python -m tests.bench``: jobq's end-to-end throughput, submit latency under closed and
open loops, due-to-start latency, CPU per job and memory, measured against Celery (lean, and
with a PostgreSQL result backend) and Dramatiq on the same RabbitMQ in the same run
(docs/design.md §7). A benchmark that prints tables, not a test.

Modules: ``jobq_side`` (jobq's services and its phases), ``peer`` (what the peers share),
``celery_side``/``celery_app`` and ``dramatiq_side``/``dramatiq_app`` (the peers, bench and
worker halves), ``counts`` (how the peers' workers report finished tasks), ``loadgen``
(closed and open HTTP loops), ``procstat`` (CPU and RSS from ``/proc``), ``amqp`` and ``pg``
(broker and database helpers), ``report`` (the tables), ``__main__`` (arguments and the
interleaved runs); the subprocesses it starts, and always stops, are ``tests.procs``.
"""

from collections.abc import Sequence

from tests.procs import Proc, ProcessDied


class BenchError(ProcessDied):
    """The benchmark could not complete a measurement."""


def tails(procs: Sequence[Proc]) -> str:
    """The last lines of each child's log, for an error message."""
    return "\n".join(f"--- {p.name} ({p.log}):\n{p.tail(15)}" for p in procs)
