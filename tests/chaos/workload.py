"""The load client: jobs from several tenants, each with its own ``Idempotency-Key``, submitted
over HTTP by concurrent clients that retry what got no answer (or a 429/5xx) with the same key,
as a careful application would. It records every key it was given a job id for."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterable
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
) -> list[Spec]:
    """``n`` chaos.work jobs over the tenants; every ``fail_always_every``-th fails on every
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
        out.append(Spec(str(uuid.uuid4()), TENANTS[i % len(TENANTS)], body))
    return out


@dataclass
class Load:
    url: str
    #: Tenant -> the Authorization header of that tenant's API client.
    auth: dict[str, dict[str, str]]
    #: Idempotency key -> the job id the API answered with (the same on every retry).
    accepted: dict[str, uuid.UUID] = field(default_factory=dict)
    #: HTTP status -> answers; 0 counts requests that got no answer at all.
    http: Counter[int] = field(default_factory=Counter)
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
        self, specs: list[Spec], *, rate: float = 0, clients: int = 8, give_up_after: float = 120
    ) -> None:
        """Submit every spec (at ``rate`` jobs/s if given), each retried until accepted."""
        todo = iter(enumerate(specs))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=limits) as client:

            async def one_client() -> None:
                for i, spec in todo:
                    if rate:
                        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
                    await self._submit(client, spec, loop.time() + give_up_after)

            await asyncio.gather(*(one_client() for _ in range(clients)))

    async def _submit(self, client: httpx.AsyncClient, spec: Spec, deadline: float) -> None:
        backoff = 0.1
        while True:
            try:
                r = await client.post("/v1/jobs", json=spec.body, headers=self.headers(spec))
                self.http[r.status_code] += 1
            except httpx.HTTPError:
                self.http[0] += 1
                r = None
            if r is not None and r.status_code in (200, 202):
                job_id = uuid.UUID(r.json()["id"])
                previous = self.accepted.setdefault(spec.key, job_id)
                assert previous == job_id, f"key {spec.key}: {previous} then {job_id}"
                self.replays += r.status_code == 200
                return
            if r is not None and r.status_code < 500 and r.status_code != 429:
                raise AssertionError(f"{spec.key}: {r.status_code} {r.text}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{spec.key}: not accepted in time ({r and r.status_code})")
            self.retries += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
