"""``GET /v1/queues``: per queue, the broker's view and the jobs by status."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from litestar import Request, get
from litestar.di import NamedDependency

from services.api.auth import requires_scopes
from services.api.openapi import problems
from services.api.schemas import QueueList, QueueOut
from services.api.tokens import Principal
from shared.config import Settings
from shared.db.store import JobStore
from shared.messaging import Broker

log = logging.getLogger("jobq.api")


async def _unacked(settings: Settings, broker: Broker, queues: list[str]) -> dict[str, int]:
    """Unacked counts from the management API; empty if it is not reachable."""
    if not settings.management_url:
        return {}
    url = urlsplit(settings.management_url)
    vhost = quote(urlsplit(settings.amqp_url).path.lstrip("/") or "/", safe="")
    base = f"{url.scheme}://{url.hostname}:{url.port or 15672}"
    out: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(
            base_url=base, auth=(url.username or "guest", url.password or "guest"), timeout=2.0
        ) as client:
            for q in queues:
                name = quote(broker.topology.queue_name(q), safe="")
                r = await client.get(f"/api/queues/{vhost}/{name}")
                if r.status_code == 200:
                    out[q] = int(r.json().get("messages_unacknowledged", 0))
    except httpx.HTTPError as exc:
        log.info("management API unavailable", extra={"error": repr(exc)})
    return out


@get(
    "/v1/queues",
    guards=[requires_scopes],
    opt={"scopes": ["jobs:read"]},
    responses=problems(401, 403, 503),
)
async def list_queues(
    request: Request[Principal, Any, Any],
    store: NamedDependency[JobStore],
    broker: NamedDependency[Broker],
    settings: NamedDependency[Settings],
) -> QueueList:
    """Ready and unacked messages and consumers per queue (broker-wide), and the caller's
    jobs by status (every tenant's for ``admin``)."""
    tenant = None if "admin" in request.user.scopes else request.user.tenant
    counts = await store.counts_by_queue(tenant)
    names = sorted(counts)
    unacked = await _unacked(settings, broker, names)
    items = []
    for name in names:
        try:
            ready, consumers = await broker.queue_state(name)
        except Exception:
            ready = consumers = None  # type: ignore[assignment]
        items.append(QueueOut(name, ready, unacked.get(name), consumers, counts[name]))
    return QueueList(items=items)


ROUTES = [list_queues]
