"""The dead-letter operations the API offers, for any of its callers: the ``/v1/dead`` routes
now, a dashboard's pages later (docs/design.md §8).

Each acts within one tenant: the caller's, or, for a token with the ``admin`` scope, the one it
names. Replays are checked here (what the schema cannot say), done by ``DeadLetterStore`` in
one transaction with their audit, and their tickets sent through the outbox like a retry's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar.exceptions import PermissionDeniedException, ValidationException

from services.api.schemas import DeadFilterIn, PurgeIn, PurgeOut, ReplayIn
from services.api.submission import canonical_digest, checked_payload
from shared.db.dead_letters import Action, DeadFilter, Edits, ReplayOutcome

if TYPE_CHECKING:
    from services.api.tokens import Principal
    from services.api.types import TypeCatalog
    from shared.config import Settings
    from shared.db.dead_letters import DeadLetterStore
    from shared.outbox import Outbox


def acting_tenant(principal: Principal, asked: str | None) -> str:
    """The tenant a dead-letter call acts in: the caller's, or (``admin`` only) the one it
    names; naming another without ``admin`` is ``403``."""
    if asked is None or asked == principal.tenant:
        return principal.tenant
    if "admin" not in principal.scopes:
        raise PermissionDeniedException(detail="only the admin scope may name another tenant")
    return asked


def dead_filter(tenant: str, given: DeadFilterIn | None) -> DeadFilter:
    f = given or DeadFilterIn()
    if f.since is not None and f.until is not None and f.until <= f.since:
        raise ValidationException(detail="until must be later than since")
    return DeadFilter(tenant, f.queue, f.type, f.error, f.since, f.until)


class DeadLetters:
    """Replays and purges, checked, recorded and (replays) sent."""

    def __init__(
        self,
        store: DeadLetterStore,
        outbox: Outbox,
        settings: Settings,
        catalog: TypeCatalog | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        #: Set with ``JOBQ_STRICT_TYPES``: an edited payload must fit its type's schema.
        self.catalog = catalog

    async def replay(
        self, principal: Principal, data: ReplayIn, idempotency_key: str | None
    ) -> ReplayOutcome:
        """Replay what ``data`` names; the same ``idempotency_key`` with the same request
        again answers the first outcome without replaying (another request: ``422``)."""
        tenant = acting_tenant(principal, data.tenant)
        if (data.ids is None) == (data.filter is None):
            raise ValidationException(detail="give ids or a filter (an empty one: {}), not both")
        if data.ids is not None and len(set(data.ids)) != len(data.ids):
            raise ValidationException(detail="ids repeat")
        where = dead_filter(tenant, data.filter)
        edits = await self._edits(tenant, data)
        request = {
            "tenant": tenant,
            "ids": None if data.ids is None else [str(i) for i in data.ids],
            "filter": None if data.filter is None else where.described(),
            "limit": None if data.filter is None else data.limit,
            "queue": data.queue,
            "payload_digest": edits.payload_digest,
        }
        action = Action(principal.client_id, request, canonical_digest(request), idempotency_key)
        outcome = await self.store.replay(where, data.ids, data.limit, edits, action)
        await self.outbox.send(outcome.tickets, "replayed")
        return outcome

    async def _edits(self, tenant: str, data: ReplayIn) -> Edits:
        if data.payload is msgspec.UNSET:
            return Edits(queue=data.queue)
        if data.ids is None or len(data.ids) != 1:
            raise ValidationException(detail="payload replaces one job's: give exactly one id")
        payload_json = checked_payload(data.payload, self.settings)
        if self.catalog is not None:
            job, _ = await self.store.get(tenant, data.ids[0])
            if job is not None:
                await self.catalog.check(tenant, job.type, data.payload)
        return Edits(data.queue, payload_json, canonical_digest(data.payload))

    async def purge(self, principal: Principal, data: PurgeIn) -> PurgeOut:
        """Count (dry run) or delete the dead jobs the filter matches; a real purge is
        recorded with its count."""
        tenant = acting_tenant(principal, data.tenant)
        where = dead_filter(tenant, data.filter)
        matched = await self.store.count(where)
        if data.dry_run:
            return PurgeOut(dry_run=True, matched=matched, deleted=0, action_id=None)
        request = {"tenant": tenant, "filter": where.described()}
        action = Action(principal.client_id, request, canonical_digest(request))
        action_id, deleted = await self.store.purge(where, action)
        return PurgeOut(dry_run=False, matched=matched, deleted=deleted, action_id=action_id)
