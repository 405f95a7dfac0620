"""Single submits gathered into one statement, on the real PostgreSQL and RabbitMQ: each request
keeps its own outcome, and idempotency holds within one statement as across statements."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.limits import Budget, SubmitLimiter
from services.api.schemas import JobIn
from services.api.submission import Intake
from services.api.tokens import Principal
from shared.config import Settings
from shared.db.submits import NewJob, Outcome, SubmitStore
from shared.db.tickets import TicketStore
from shared.errors import IdempotencyKeyReused, UndeclaredQueue
from shared.messaging import Broker
from shared.metrics import Metrics
from shared.outbox import Outbox

pytestmark = pytest.mark.integration

ACME = Principal("client-a", "acme", frozenset({"jobs:write"}))
GLOBEX = Principal("client-g", "globex", frozenset({"jobs:write"}))


class Recording(SubmitStore):
    """The real store, noting the size of each gathered statement."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.statements: list[int] = []

    async def insert_each(self, jobs: list[NewJob]) -> list[Outcome]:  # type: ignore[override]
        self.statements.append(len(jobs))
        return await super().insert_each(jobs)


def make_intake(settings: Settings, engine: AsyncEngine, broker: Broker) -> Intake:
    unlimited = SubmitLimiter(Budget(0, 0), Budget(0, 0))
    return Intake(
        Recording(engine),
        Outbox(TicketStore(engine), broker, settings.mark_delay_seconds),
        unlimited,
        settings,
        Metrics("api"),
    )


async def test_requests_gathered_into_one_statement_each_get_their_own_outcome(
    settings: Settings, engine: AsyncEngine, broker: Broker, clean: None
) -> None:
    intake = make_intake(replace(settings, submit_statements=1), engine, broker)
    store = intake.submits
    assert isinstance(store, Recording)
    # An earlier job holds key "k-old"
    earlier, created = await intake.one(JobIn(type="noop", payload=1), ACME, "k-old", None)
    assert created
    # When many requests arrive while one statement runs
    requests = [
        *((JobIn(type="noop", payload=i), ACME, None) for i in range(10)),
        # the same key three times, same request: one job
        *((JobIn(type="noop", payload="same"), ACME, "k-new") for _ in range(3)),
        # the same key in another tenant: its own job
        (JobIn(type="noop", payload="same"), GLOBEX, "k-new"),
        # an earlier key with another request
        (JobIn(type="noop", payload=2), ACME, "k-old"),
        # the earlier key with the same request
        (JobIn(type="noop", payload=1), ACME, "k-old"),
        (JobIn(type="noop", queue="nowhere"), ACME, None),
        (JobIn(type="noop", queue="nowhere"), ACME, "k-nowhere"),
    ]
    first = asyncio.ensure_future(intake.one(JobIn(type="noop"), ACME, None, None))
    await asyncio.sleep(0)
    outcomes = await asyncio.gather(
        *(intake.one(data, who, key, None) for data, who, key in requests),
        return_exceptions=True,
    )
    await first
    # Then they shared one statement...
    assert store.statements == [1, 1, len(requests)]
    # ... and each got what it would have got alone
    plain, same, other_tenant, reused, replayed, undeclared, undeclared_keyed = (
        outcomes[:10],
        outcomes[10:13],
        outcomes[13],
        outcomes[14],
        outcomes[15],
        outcomes[16],
        outcomes[17],
    )
    assert all(isinstance(o, tuple) and o[1] for o in plain)
    assert [o[1] for o in same if isinstance(o, tuple)] == [True, False, False]
    assert len({o[0].id for o in same if isinstance(o, tuple)}) == 1
    assert isinstance(other_tenant, tuple)
    assert other_tenant[1]
    assert other_tenant[0].tenant == "globex"
    assert isinstance(reused, IdempotencyKeyReused)
    assert replayed == (earlier, False)
    assert isinstance(undeclared, UndeclaredQueue)
    assert isinstance(undeclared_keyed, UndeclaredQueue)
    async with engine.connect() as conn:
        count = await conn.scalar(sa.text("SELECT count(*) FROM jobs"))
    assert count == 1 + 1 + 10 + 1 + 1  # earlier, first, plain, k-new, globex's k-new
    await intake.close()
    await intake.outbox.close()
    # Every new job's ticket was published
    ready, _ = await broker.queue_state("default")
    assert ready == count
