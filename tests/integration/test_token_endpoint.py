"""Attacks on ``POST /v1/auth/token``, on real PostgreSQL: guessing secrets (throttled per
client id and per source address), telling known client ids from unknown ones by the work a
refusal takes, and tokens outliving their client."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import shared.credentials
from services.api.routes import auth
from shared.config import Settings
from shared.db.clients import ClientStore
from tests.integration.conftest import wait_for
from tests.integration.test_security import Client, served, token_for

pytestmark = pytest.mark.integration

Register = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture
def register(engine: AsyncEngine, clean: None) -> Register:
    """Makes a real client; returns its id and secret."""

    async def make(expires_at: datetime | None = None) -> tuple[str, str]:
        client, secret = await ClientStore(engine).register(
            "app", "acme", ["jobs:read"], expires_at
        )
        return str(client.id), secret

    return make


def throttled(settings: Settings, per_client: int, per_address: int) -> Settings:
    return replace(
        settings,
        token_client_failures_per_minute=per_client,
        token_address_failures_per_minute=per_address,
    )


async def assert_throttled(api: Client, client_id: str, secret: str, most: int) -> None:
    """The attempt is ``429`` (as problem+json with an OAuth2 error code), waiting at most
    ``most`` seconds, and says nothing of the secret."""
    r = await token_for(api, client_id, secret)
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= most
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["error"] == "slow_down"
    assert secret not in r.text


async def test_failures_for_one_client_id_are_throttled_and_other_ids_answer_until_the_address_is(
    settings: Settings, register: Register
) -> None:
    async with served(throttled(settings, per_client=3, per_address=5)) as api:
        (a, a_secret), (b, b_secret), (c, c_secret) = [await register() for _ in range(3)]
        for _ in range(3):
            assert (await token_for(api, a, "wrong")).status_code == 401
        await assert_throttled(api, a, a_secret, most=20)  # even the right secret
        for _ in range(2):  # another id from the same address still gets answers...
            assert (await token_for(api, b, "wrong")).status_code == 401
        await assert_throttled(api, b, b_secret, most=12)  # ...until the address's 5 are spent
        await assert_throttled(api, c, c_secret, most=12)
        schema = (await api.get("/schema/openapi.json")).json()
        assert "429" in schema["paths"]["/v1/auth/token"]["post"]["responses"]


async def test_the_address_budget_counts_failures_across_client_ids(
    settings: Settings, register: Register
) -> None:
    async with served(throttled(settings, per_client=3, per_address=5)) as api:
        known, secret = await register()
        for client_id in [str(uuid.uuid4()) for _ in range(4)] + ["admin"]:
            assert (await token_for(api, client_id, "guess")).status_code == 401
        await assert_throttled(api, known, secret, most=12)


async def test_spellings_of_one_client_id_share_its_budget(
    settings: Settings, register: Register
) -> None:
    async with served(throttled(settings, per_client=3, per_address=100)) as api:
        client_id, secret = await register()
        for spelling in (client_id.upper(), f"{{{client_id}}}", f"urn:uuid:{client_id}"):
            assert (await token_for(api, spelling, "wrong")).status_code == 401
        await assert_throttled(api, client_id, secret, most=20)


async def test_the_right_secret_works_again_once_the_budget_refills(
    settings: Settings, register: Register
) -> None:
    # 20 a minute: one more every 3 s; the address budget is off (0).
    async with served(throttled(settings, per_client=20, per_address=0)) as api:
        client_id, secret = await register()
        for _ in range(20):
            assert (await token_for(api, client_id, "wrong")).status_code == 401
        await assert_throttled(api, client_id, secret, most=3)

        async def granted() -> bool:
            r = await token_for(api, client_id, secret)
            assert r.status_code in (200, 429), r.text
            return bool(r.status_code == 200)

        await wait_for(granted, within=10, interval=0.2)


async def test_every_refusal_does_the_same_work(
    settings: Settings,
    register: Register,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown id, an id that is not a UUID, a wrong secret, a revoked and an expired
    client: one lookup, one hash, one comparison each, counted by spies that call through."""
    work: dict[str, int] = {}

    def spy(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def counted(*args: Any) -> Any:
            work[name] = work.get(name, 0) + 1
            return real(*args)

        monkeypatch.setattr(owner, name, counted)

    spy(ClientStore, "credentials")
    spy(shared.credentials, "hash_secret")
    spy(auth, "secret_matches")
    async with served(throttled(settings, per_client=0, per_address=0)) as api:
        known, secret = await register()
        revoked, revoked_secret = await register()
        await ClientStore(engine).revoke(uuid.UUID(revoked))
        expired, expired_secret = await register()
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE api_clients SET expires_at = now() - interval '1 s' WHERE id = :id"
                ),
                {"id": expired},
            )
        refusals = {
            "unknown id": (str(uuid.uuid4()), secret),
            "id not a UUID": ("admin", secret),
            "wrong secret": (known, secret[:-1] + "x"),
            "revoked client": (revoked, revoked_secret),
            "expired client": (expired, expired_secret),
        }
        for name, (client_id, attempt) in refusals.items():
            work.clear()
            r = await token_for(api, client_id, attempt)
            assert r.status_code == 401, name
            assert r.json()["error"] == "invalid_client"
            assert work == {"credentials": 1, "hash_secret": 1, "secret_matches": 1}, name

        took: dict[str, list[float]] = {"unknown id": [], "wrong secret": []}
        for _ in range(200):  # interleaved, so that warm-up and noise fall on both alike
            for name, samples in took.items():
                t0 = time.perf_counter()
                assert (await token_for(api, *refusals[name])).status_code == 401
                samples.append(time.perf_counter() - t0)
        medians = ", ".join(f"{k} {statistics.median(v) * 1000:.3f} ms" for k, v in took.items())
        print(f"\nmedian latency over 200 refusals each: {medians}")


async def test_a_token_never_outlives_its_client(
    api: Client, register: Register, settings: Settings
) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=60)
    client_id, secret = await register(expires_at)
    body = (await token_for(api, client_id, secret)).json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert 50 <= body["expires_in"] <= 60
    assert claims["exp"] <= expires_at.timestamp()
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    lasting = await token_for(api, *await register())
    assert lasting.json()["expires_in"] == settings.jwt_ttl_seconds
