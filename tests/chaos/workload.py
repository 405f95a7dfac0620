"""The load client: jobs from several tenants, each with its own ``Idempotency-Key``, submitted
over HTTP by concurrent clients that retry what got no answer (or a 429/5xx) with the same key,
as a careful application would. It records every key it was given a job id for."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.config import Settings
from shared.db.engine import make_engine
from tests.conftest import client_bearer

TENANTS = ("acme", "globex", "initech")


@dataclass(frozen=True, slots=True)
class Spec:
    key: str
    tenant: str
    body: dict[str, Any]


def jobs(
    n: int,
    *,
    seed: int = 0,
    ms: tuple[int, int] = (20, 150),
    fail_always_every: int = 40,
    fail_once_every: int = 25,
    kill: Iterable[int] = (),
    max_attempts: int = 5,
    delay_every: int = 0,
    tenants: Sequence[str] = TENANTS,
) -> list[Spec]:
    """``n`` chaos.work jobs over ``tenants``; every ``fail_always_every``-th fails on every
    attempt, every ``fail_once_every``-th on its first; indices in ``kill`` kill their worker;
    every ``delay_every``-th starts ``scheduled`` (a 0.5-1.5 s delay)."""
    rnd = random.Random(seed)
    killers = set(kill)
    out = []
    for i in range(n):
        payload: dict[str, Any] = {"n": i, "ms": rnd.randint(*ms)}
        if fail_always_every and i % fail_always_every == fail_always_every - 1:
            payload["fail"] = "always"
        elif fail_once_every and i % fail_once_every == fail_once_every - 2:
            payload["fail"] = "once"
        if i in killers:
            payload["kill"] = True
        body: dict[str, Any] = {
            "type": "chaos.work",
            "payload": payload,
            "max_attempts": max_attempts,
            "retry_backoff_seconds": 0.2,
            "retry_backoff_max_seconds": 1.0,
        }
        if delay_every and i % delay_every == 0:
            body["delay_seconds"] = 0.5 + rnd.random()
        out.append(Spec(str(uuid.uuid4()), tenants[i % len(tenants)], body))
    return out


def dependents(
    parents: Sequence[Spec], accepted: dict[str, uuid.UUID], n: int, *, seed: int = 0
) -> list[Spec]:
    """``n`` chaos.work jobs (as ``jobs`` makes them, without kills), each waiting for one to
    three accepted ``parents`` of its tenant (docs/design.md §2.1); every other one runs even
    if a parent fails (``on_dependency_failure=run``)."""
    rnd = random.Random(seed)
    by_tenant: dict[str, list[uuid.UUID]] = {}
    for p in parents:
        by_tenant.setdefault(p.tenant, []).append(accepted[p.key])
    tenants = sorted(by_tenant)
    out = []
    for i, spec in enumerate(jobs(n, seed=seed, tenants=tenants)):
        pool = by_tenant[spec.tenant]
        body = {
            **spec.body,
            "depends_on": [str(p) for p in rnd.sample(pool, min(len(pool), rnd.randint(1, 3)))],
            "on_dependency_failure": "run" if i % 2 else "cancel",
        }
        out.append(Spec(spec.key, spec.tenant, body))
    return out


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's answer: its tenant, when it was sent (loop time), its status (0: none)
    and how long it took."""

    tenant: str
    sent: float
    status: int
    seconds: float


@dataclass
class Load:
    url: str
    #: Tenant -> the Authorization header of that tenant's API client.
    auth: dict[str, dict[str, str]]
    #: Idempotency key -> the job id the API answered with (the same on every retry).
    accepted: dict[str, uuid.UUID] = field(default_factory=dict)
    #: HTTP status -> answers; 0 counts requests that got no answer at all.
    http: Counter[int] = field(default_factory=Counter)
    answers: list[Answer] = field(default_factory=list)
    retries: int = 0
    replays: int = 0

    @classmethod
    async def against(cls, url: str, database_url: str, secret: str) -> Load:
        """A load client for the API at ``url``, with a real client per tenant (tokens valid
        for a day, so soaks of any length need no refresh)."""
        engine = make_engine(Settings(database_url=database_url), "chaos-load", pool_size=1)
        signer = Settings(jwt_secret=secret, jwt_ttl_seconds=24 * 3600)
        try:
            auth = {t: await client_bearer(engine, signer, t) for t in TENANTS}
        finally:
            await engine.dispose()
        return cls(url, auth)

    def headers(self, spec: Spec) -> dict[str, str]:
        return {**self.auth[spec.tenant], "Idempotency-Key": spec.key}

    async def run(
        self,
        specs: list[Spec],
        *,
        rate: float = 0,
        clients: int = 8,
        give_up_after: float = 120,
        retry_refused: bool = True,
    ) -> None:
        """Submit every spec (at ``rate`` jobs/s if given), each retried until accepted; with
        ``retry_refused=False`` a 429 or 503 ends its spec (it never became a job)."""
        todo = iter(enumerate(specs))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=limits) as client:

            async def one_client() -> None:
                for i, spec in todo:
                    if rate:
                        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
                    await self._submit(client, spec, loop.time() + give_up_after, retry_refused)

            await asyncio.gather(*(one_client() for _ in range(clients)))

    async def _submit(
        self, client: httpx.AsyncClient, spec: Spec, deadline: float, retry_refused: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        while True:
            sent = loop.time()
            try:
                r = await client.post("/v1/jobs", json=spec.body, headers=self.headers(spec))
            except httpx.HTTPError:
                r = None
            status = 0 if r is None else r.status_code
            self.http[status] += 1
            self.answers.append(Answer(spec.tenant, sent, status, loop.time() - sent))
            if status in (429, 503) and not retry_refused:
                return
            if r is not None and r.status_code in (200, 202):
                job_id = uuid.UUID(r.json()["id"])
                previous = self.accepted.setdefault(spec.key, job_id)
                assert previous == job_id, f"key {spec.key}: {previous} then {job_id}"
                self.replays += r.status_code == 200
                return
            if r is not None and r.status_code < 500 and r.status_code != 429:
                raise AssertionError(f"{spec.key}: {r.status_code} {r.text}")
            if loop.time() > deadline:
                raise AssertionError(f"{spec.key}: not accepted in time ({r and r.status_code})")
            self.retries += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
