"""Queues: ``GET /v1/queues`` for every reader, ``/v1/admin/queues`` to declare, change and
delete them (scope ``admin``).

Queues are resources an operator declares; a job naming any other queue is refused, so no
client can make the broker grow. A reader sees the declared queues with its own tenant's jobs
by status; RabbitMQ's figures, which count every tenant's tickets, are for ``admin`` only.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from services.api.auth import requires_scopes
from services.api.broker_stats import BrokerStats
from services.api.errors import Conflict
from services.api.openapi import problems
from services.api.schemas import (
    NULLABLE_QUEUE_SETTINGS,
    QueueIn,
    QueueList,
    QueueOut,
    QueuePatch,
)
from services.api.tokens import Principal
from shared.config import QUEUE_NAME
from shared.db.jobs import JobStore
from shared.db.models import Queue
from shared.db.queues import QueueStore
from shared.messaging import Broker

log = logging.getLogger("jobq.api")
ADMIN = {"scopes": ["admin"]}
PATH = "/v1/admin/queues/{name:str}"


@get(
    "/v1/queues",
    guards=[requires_scopes],
    opt={"scopes": ["jobs:read"]},
    responses=problems(401, 403, 503),
)
async def list_queues(
    request: Request[Principal, Any, Any],
    store: NamedDependency[JobStore],
    queue_store: NamedDependency[QueueStore],
    broker_stats: NamedDependency[BrokerStats],
) -> QueueList:
    """The declared queues, the caller's jobs in each by status, and (``admin`` only)
    RabbitMQ's figures."""
    counts = await store.counts_by_queue(request.user.tenant)
    figures = await broker_stats.figures() if "admin" in request.user.scopes else None
    return QueueList(
        items=[
            QueueOut.of(q, counts.get(q.name, {}), None if figures is None else figures.get(q.name))
            for q in await queue_store.all()
        ]
    )


@post(
    "/v1/admin/queues",
    guards=[requires_scopes],
    opt=ADMIN,
    status_code=201,
    responses=problems(401, 403, 409, 413, 415, 422, 503),
)
async def declare_queue(
    data: JSONBody[QueueIn],
    queue_store: NamedDependency[QueueStore],
    broker: NamedDependency[Broker],
) -> Response[QueueOut]:
    """Declare a queue, here and on RabbitMQ; one of that name exists: ``409``."""
    created = await queue_store.create(Queue(**msgspec.structs.asdict(data)))
    if created is None:
        raise Conflict(detail=f"queue {data.name!r} is already declared")
    try:
        await broker.ensure_queue(created.name, redeclare=True)
    except Exception as exc:  # declared all the same: the broker's queue follows on first use
        log.warning("broker queue not declared yet", extra={"queue": data.name, "error": repr(exc)})
    return Response(
        QueueOut.of(created, {}, None),
        status_code=201,
        headers={"Location": f"/v1/admin/queues/{created.name}"},
    )


@get("/v1/admin/queues", guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 503))
async def admin_list_queues(
    store: NamedDependency[JobStore],
    queue_store: NamedDependency[QueueStore],
    broker_stats: NamedDependency[BrokerStats],
) -> QueueList:
    """Every declared queue with every tenant's jobs by status and RabbitMQ's figures."""
    counts = await store.counts_by_queue(None)
    figures = await broker_stats.figures()
    return QueueList(
        items=[
            QueueOut.of(q, counts.get(q.name, {}), figures.get(q.name))
            for q in await queue_store.all()
        ]
    )


def _no_queue(name: str) -> NotFoundException:
    return NotFoundException(detail=f"no queue {name[:64]!r}")


async def _declared(queue_store: QueueStore, name: str) -> Queue:
    """The queue ``name`` names; a name no queue can have never reaches the database."""
    queue = await queue_store.get(name) if QUEUE_NAME.fullmatch(name) else None
    if queue is None:
        raise _no_queue(name)
    return queue


@get(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 404, 503))
async def get_queue(
    name: FromPath[str],
    store: NamedDependency[JobStore],
    queue_store: NamedDependency[QueueStore],
    broker_stats: NamedDependency[BrokerStats],
) -> QueueOut:
    """One declared queue, as in the admin listing."""
    queue = await _declared(queue_store, name)
    counts = await store.counts_by_queue(None, name)
    return QueueOut.of(queue, counts.get(name, {}), (await broker_stats.figures()).get(name))


@patch(
    PATH,
    guards=[requires_scopes],
    opt=ADMIN,
    responses=problems(401, 403, 404, 413, 415, 422, 503),
)
async def change_queue(
    name: FromPath[str], data: JSONBody[QueuePatch], queue_store: NamedDependency[QueueStore]
) -> QueueOut:
    """Change a queue's settings; jobs already accepted keep the ones they were given."""
    if not QUEUE_NAME.fullmatch(name):
        raise _no_queue(name)
    changes = {
        k: v
        for k, v in msgspec.structs.asdict(data).items()
        if v is not msgspec.UNSET and (v is not None or k in NULLABLE_QUEUE_SETTINGS)
    }
    changed = await queue_store.update(name, changes) if changes else await queue_store.get(name)
    if changed is None:
        raise _no_queue(name)
    return QueueOut.of(changed, {}, None)


@delete(PATH, guards=[requires_scopes], opt=ADMIN, responses=problems(401, 403, 404, 409, 503))
async def delete_queue(
    name: FromPath[str], queue_store: NamedDependency[QueueStore], broker: NamedDependency[Broker]
) -> None:
    """Delete a queue and its broker queue: ``409`` for ``default``, while any job of the queue
    is unfinished, or while workers consume it. Its finished jobs stay readable."""
    if name == "default":
        raise Conflict(detail="the default queue cannot be deleted")
    if not QUEUE_NAME.fullmatch(name) or not await queue_store.delete(
        name, lambda: broker.delete_queue(name)
    ):
        raise _no_queue(name)


ROUTES = [list_queues, declare_queue, admin_list_queues, get_queue, change_queue, delete_queue]
