"""Liveness, readiness and metrics (no token needed; docs/operations.md)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from services.api.errors import problem
from services.api.openapi import problems
from shared.db.jobs import JobStore
from shared.messaging import Broker
from shared.metrics import Metrics


@get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/health/ready", responses=problems(503))
async def ready(store: NamedDependency[JobStore], broker: NamedDependency[Broker]) -> Response[Any]:
    """PostgreSQL and RabbitMQ are reachable; ``503`` naming the one that is not."""
    down = []
    try:
        await store.ping()
    except Exception:
        down.append("postgresql")
    if not broker.connected:
        down.append("rabbitmq")
    if down:
        return problem(503, f"unreachable: {', '.join(down)}", headers={"Retry-After": "2"})
    return Response({"status": "ready"})


@get("/metrics", media_type=CONTENT_TYPE_LATEST, include_in_schema=True)
async def metrics(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    """This API's metrics in Prometheus text (every API process's, behind one port)."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [health, ready, metrics]
