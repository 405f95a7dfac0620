"""``/ui``: the caller's tenant's queues (depth by status, ready, oldest ready age, running,
what finished lately) and its jobs that failed within the last hour.

The figures are the ones the API and the scheduler already read: ``JobStore.counts_by_queue``
(``GET /v1/queues``), ``SweepStore.queue_figures`` (the ``jobq_queue_*`` gauges) for the
tenant, and RabbitMQ's figures for ``admin`` only, as ``GET /v1/queues`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.di import NamedDependency
from litestar.response import Template

from services.api.broker_stats import BrokerFigures, BrokerStats
from services.api.ui.render import UiRequest, page, view
from shared.db.dashboard import DashboardStore
from shared.db.jobs import JobStore
from shared.db.models import Queue
from shared.db.queues import QueueStore
from shared.db.sweeps import QueueFigures, SweepStore
from shared.domain import JobStatus

#: What "lately" is: the rates' window, and how far back failures are listed (and how many).
RATE_SECONDS = 300
FAILURE_SECONDS = 3600
FAILURES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    description: str
    #: Jobs by status, every status in ``JobStatus`` order (0 where none).
    counts: dict[str, int]
    figures: QueueFigures | None
    #: Finished within ``RATE_SECONDS``, per minute.
    succeeded_per_minute: float
    dead_per_minute: float
    broker: BrokerFigures | None


def queue_rows(
    queues: list[Queue],
    counts: dict[str, dict[str, int]],
    figures: list[QueueFigures],
    finished: dict[str, dict[str, int]],
    broker: dict[str, BrokerFigures] | None,
) -> list[QueueRow]:
    """One row per declared queue, from what each read returned (a queue may be absent)."""
    by_queue = {f.queue: f for f in figures}
    per_minute = 60 / RATE_SECONDS
    return [
        QueueRow(
            name=q.name,
            description=q.description,
            counts={s.value: counts.get(q.name, {}).get(s.value, 0) for s in JobStatus},
            figures=by_queue.get(q.name),
            succeeded_per_minute=finished.get(q.name, {}).get("succeeded", 0) * per_minute,
            dead_per_minute=finished.get(q.name, {}).get("dead", 0) * per_minute,
            broker=None if broker is None else broker.get(q.name),
        )
        for q in queues
    ]


@view("/ui")
async def overview(
    request: UiRequest,
    store: NamedDependency[JobStore],
    queue_store: NamedDependency[QueueStore],
    broker_stats: NamedDependency[BrokerStats],
    sweeps: NamedDependency[SweepStore],
    dashboard: NamedDependency[DashboardStore],
) -> Template:
    tenant = request.user.tenant
    queues = await queue_store.all()
    rows = queue_rows(
        queues,
        await store.counts_by_queue(tenant),
        await sweeps.queue_figures(tenant),
        await dashboard.finished(tenant, [q.name for q in queues], RATE_SECONDS),
        await broker_stats.figures() if "admin" in request.user.scopes else None,
    )
    failures = await dashboard.failures(tenant, FAILURE_SECONDS, FAILURES_SHOWN)
    return page(
        request,
        "overview.html",
        queues=rows,
        statuses=[s.value for s in JobStatus],
        failures=failures,
        rate_minutes=RATE_SECONDS // 60,
    )


ROUTES = [overview]
