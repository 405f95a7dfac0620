"""When a queued job waits in PostgreSQL for the dispatcher instead of going to RabbitMQ at
once (``held``, docs/design.md §2.2): the rule, for the statements that move jobs to
``queued``.

A job is held when something must be counted before it may start: its ``concurrency_key``,
its queue's ``max_running``, its tenant's limits; or when its queue is ``congested`` (the
dispatcher then hands out tickets tenant by tenant, so no tenant's flood queues ahead of the
others). A held job has no ticket (``dispatched_at`` and ``published_at`` are null), so the
republishing sweeps leave it alone and no worker can claim it. The submit's INSERT
(``shared.db.submits``) applies the same rule to the rows it inserts.
"""

from __future__ import annotations


def held(
    queue: str = "jobs.queue", key: str = "jobs.concurrency_key", tenant: str = "jobs.tenant"
) -> str:
    """Whether a job (by default the row of an ``UPDATE jobs``; the submit's INSERT names its
    own columns) that moves into ``queue`` is held."""
    return f"""({key} IS NOT NULL
        OR EXISTS (SELECT 1 FROM queues hq WHERE hq.name = {queue}
                   AND (hq.max_running IS NOT NULL OR hq.congested))
        OR EXISTS (SELECT 1 FROM tenant_limits ht WHERE ht.tenant = {tenant}))"""


def queued(queue: str = "jobs.queue", ends_queued: str = "true") -> str:
    """The assignments of such a statement: the job held, or its ticket owed now. A statement
    that may also end a job otherwise (dead, canceled) names when it ends ``queued``: only
    then is it held (a dead job's ticket goes to the dead-letter exchange at once)."""
    hold = f"({ends_queued}) AND {held(queue)}"
    return f"held = {hold}, dispatched_at = CASE WHEN {hold} THEN NULL ELSE now() END"
