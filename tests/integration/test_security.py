"""Attacks on the API, on real PostgreSQL and RabbitMQ: stolen, revoked, rotated and forged
credentials, other tenants' objects, missing scopes, floods, and secrets leaking into logs,
traces or error bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.cursors import dead_cursor
from shared.config import Settings
from shared.db.jobs import JobStore
from tests.conftest import Bearer, jobs_of
from tests.forge import b64, hand_signed, pem
from tests.integration.conftest import listening
from tests.integration.test_dead_letters import dead_job

Client = AsyncTestClient[Litestar]
pytestmark = pytest.mark.integration
ALL_SCOPES = ["admin", "jobs:read", "jobs:work", "jobs:write"]


@asynccontextmanager
async def served(
    settings: Settings, provider: TracerProvider | None = None
) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(settings, provider)) as client:
        yield client


async def token_for(api: Client, client_id: str, secret: str) -> Any:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    return await api.post("/v1/auth/token", data=form)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_client(api: Client, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await api.post(
        "/v1/admin/clients",
        json={"name": "billing", "tenant": "acme", "scopes": ["jobs:read"], **body},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


# -- client management --------------------------------------------------------------------


async def test_an_admin_creates_a_client_whose_secret_is_shown_once(
    api: Client, bearer: Bearer
) -> None:
    admin = await bearer(scopes=["admin"])
    created = await new_client(api, admin, tenant="globex", scopes=["jobs:write", "jobs:read"])
    assert created["client_secret"].startswith("jqs_")
    assert created["tenant"] == "globex"
    listed = await api.get("/v1/admin/clients", headers=admin)
    one = await api.get(f"/v1/admin/clients/{created['client_id']}", headers=admin)
    for r in (listed, one):
        assert r.status_code == 200
        assert created["client_secret"] not in r.text
        assert "hash" not in r.text
    assert one.json()["scopes"] == ["jobs:read", "jobs:write"]
    token = (await token_for(api, created["client_id"], created["client_secret"])).json()
    submitted = await api.post(
        "/v1/jobs", json={"type": "noop"}, headers=auth(token["access_token"])
    )
    assert submitted.status_code == 202
    acme = await bearer(scopes=["admin", "jobs:read"])
    assert (await api.get(f"/v1/jobs/{submitted.json()['id']}", headers=acme)).status_code == 404


async def test_a_revoked_clients_unexpired_token_is_refused_on_the_next_request(
    api: Client, bearer: Bearer
) -> None:
    admin = await bearer(scopes=["admin"])
    created = await new_client(api, admin)
    token = (await token_for(api, created["client_id"], created["client_secret"])).json()
    h = auth(token["access_token"])
    assert (await api.get("/v1/jobs", headers=h)).status_code == 200
    r = await api.delete(f"/v1/admin/clients/{created['client_id']}", headers=admin)
    assert r.status_code == 204
    refused = await api.get("/v1/jobs", headers=h)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    again = await token_for(api, created["client_id"], created["client_secret"])
    assert again.status_code == 401
    listed = (await api.get(f"/v1/admin/clients/{created['client_id']}", headers=admin)).json()
    assert listed["revoked_at"]
    assert (
        await api.delete(f"/v1/admin/clients/{created['client_id']}", headers=admin)
    ).status_code == 204
    unknown = await api.delete(f"/v1/admin/clients/{uuid.uuid4()}", headers=admin)
    assert unknown.status_code == 404


async def test_rotation_retires_the_old_secret_and_its_tokens(api: Client, bearer: Bearer) -> None:
    admin = await bearer(scopes=["admin"])
    created = await new_client(api, admin)
    old = auth(
        (await token_for(api, created["client_id"], created["client_secret"])).json()[
            "access_token"
        ]
    )
    r = await api.post(f"/v1/admin/clients/{created['client_id']}/rotate", headers=admin)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["client_secret"] != created["client_secret"]
    assert (await api.get("/v1/jobs", headers=old)).status_code == 401
    assert (await token_for(api, created["client_id"], created["client_secret"])).status_code == 401
    new = await token_for(api, created["client_id"], rotated["client_secret"])
    assert (await api.get("/v1/jobs", headers=auth(new.json()["access_token"]))).status_code == 200
    await api.delete(f"/v1/admin/clients/{created['client_id']}", headers=admin)
    gone = await api.post(f"/v1/admin/clients/{created['client_id']}/rotate", headers=admin)
    assert gone.status_code == 404


async def test_an_expired_clients_token_is_refused(
    api: Client, bearer: Bearer, engine: AsyncEngine
) -> None:
    admin = await bearer(scopes=["admin"])
    soon = datetime.now(UTC) + timedelta(hours=1)
    created = await new_client(api, admin, expires_at=soon.isoformat())
    h = auth(
        (await token_for(api, created["client_id"], created["client_secret"])).json()[
            "access_token"
        ]
    )
    assert (await api.get("/v1/jobs", headers=h)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE api_clients SET expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": created["client_id"]},
        )
    assert (await api.get("/v1/jobs", headers=h)).status_code == 401
    assert (await token_for(api, created["client_id"], created["client_secret"])).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "tenant": "acme", "scopes": ["root"]},
        {"name": "x", "tenant": "acme", "scopes": []},
        {"name": "x", "tenant": "../etc", "scopes": ["jobs:read"]},
        {"name": "", "tenant": "acme", "scopes": ["jobs:read"]},
        {"name": "a\nb", "tenant": "acme", "scopes": ["jobs:read"]},
        {"name": "x" * 101, "tenant": "acme", "scopes": ["jobs:read"]},
        {"name": "x", "tenant": "acme", "scopes": ["jobs:read"], "secret": "mine"},
        {
            "name": "x",
            "tenant": "acme",
            "scopes": ["jobs:read"],
            "expires_at": "2001-01-01T00:00:00Z",
        },
        {
            "name": "x",
            "tenant": "acme",
            "scopes": ["jobs:read"],
            "expires_at": "2999-01-01T00:00:00",
        },
        {"name": "x", "tenant": "acme", "scopes": "admin"},
        {"name": 7, "tenant": "acme", "scopes": ["jobs:read"]},
    ],
)
async def test_bad_client_bodies_are_422_and_create_nothing(
    api: Client, bearer: Bearer, body: dict[str, Any]
) -> None:
    admin = await bearer(scopes=["admin"])
    r = await api.post("/v1/admin/clients", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert len((await api.get("/v1/admin/clients", headers=admin)).json()["items"]) == 1


# -- scopes and tenants -------------------------------------------------------------------

JOB = "00000000-0000-7000-8000-000000000000"
ENDPOINTS: list[tuple[str, str, str, Any]] = [
    ("POST", "/v1/jobs", "jobs:write", {"type": "noop"}),
    ("POST", "/v1/jobs/batch", "jobs:write", {"jobs": [{"type": "noop"}]}),
    ("GET", "/v1/jobs", "jobs:read", None),
    ("GET", f"/v1/jobs/{JOB}", "jobs:read", None),
    ("GET", f"/v1/jobs/{JOB}/wait?timeout=0", "jobs:read", None),
    ("POST", f"/v1/jobs/{JOB}/cancel", "jobs:write", None),
    ("POST", f"/v1/jobs/{JOB}/retry", "jobs:write", None),
    ("GET", "/v1/queues", "jobs:read", None),
    ("GET", "/v1/dead", "jobs:read", None),
    ("GET", f"/v1/dead/{JOB}", "jobs:read", None),
    ("POST", "/v1/dead/replay", "jobs:write", {"ids": [JOB]}),
    ("POST", "/v1/dead/purge", "jobs:write", {}),
    ("POST", "/v1/leases", "jobs:work", {}),
    ("POST", f"/v1/jobs/{JOB}/heartbeat", "jobs:work", {"lease_id": JOB}),
    ("POST", f"/v1/jobs/{JOB}/complete", "jobs:work", {"lease_id": JOB}),
    ("POST", f"/v1/jobs/{JOB}/fail", "jobs:work", {"lease_id": JOB, "message": "x"}),
    ("POST", "/v1/admin/clients", "admin", {"name": "x", "tenant": "t", "scopes": ["jobs:read"]}),
    ("GET", "/v1/admin/clients", "admin", None),
    ("GET", f"/v1/admin/clients/{JOB}", "admin", None),
    ("DELETE", f"/v1/admin/clients/{JOB}", "admin", None),
    ("POST", f"/v1/admin/clients/{JOB}/rotate", "admin", None),
]


@pytest.mark.parametrize(("method", "path", "needed", "body"), ENDPOINTS)
async def test_every_endpoint_is_403_for_every_token_without_its_scope(
    api: Client, bearer: Bearer, method: str, path: str, needed: str, body: Any
) -> None:
    lone = ["jobs:read"] if needed == "jobs:work" else ["jobs:work"]
    for scopes in ([s for s in ALL_SCOPES if s != needed], lone):
        h = await bearer(scopes=scopes)
        r = await api.request(method, path, json=body, headers=h)
        assert r.status_code == 403, (scopes, r.text)
        assert needed in r.json()["detail"]
    assert (await api.request(method, path, json=body)).status_code == 401


async def test_another_tenants_job_is_404_everywhere(api: Client, bearer: Bearer) -> None:
    a = await bearer("tenant-a", ALL_SCOPES)
    b = await bearer("tenant-b", ALL_SCOPES)
    job = (await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=a)).json()
    lease = {"lease_id": job["id"]}
    for method, path, body in [
        ("GET", f"/v1/jobs/{job['id']}", None),
        ("GET", f"/v1/jobs/{job['id']}/wait?timeout=0", None),
        ("POST", f"/v1/jobs/{job['id']}/cancel", None),
        ("POST", f"/v1/jobs/{job['id']}/retry", None),
        ("GET", f"/v1/dead/{job['id']}", None),
        ("POST", f"/v1/jobs/{job['id']}/heartbeat", lease),
        ("POST", f"/v1/jobs/{job['id']}/complete", lease),
        ("POST", f"/v1/jobs/{job['id']}/fail", {**lease, "message": "x"}),
    ]:
        r = await api.request(method, path, json=body, headers=b)
        assert r.status_code == 404, (path, r.text)
        assert "tenant-a" not in r.text
    listed = await api.get("/v1/jobs", params={"queue": "default"}, headers=b)
    assert listed.json()["items"] == []
    assert (await api.get(f"/v1/jobs/{job['id']}", headers=a)).json()["status"] == "scheduled"


# -- forged and stolen tokens over HTTP ---------------------------------------------------


def _claims(client: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "jobq", "aud": "jobq", "sub": client, "tenant": "acme",
            "scope": "jobs:read", "iat": now, "exp": now + 60, "jti": "j", "cv": "x"}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


async def test_forged_tokens_are_401_over_http(
    api: Client, bearer: Bearer, settings: Settings
) -> None:
    real = (await bearer())["Authorization"].split()[1]
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    secret = settings.jwt_secret
    kid = {"kid": header["kid"]}
    forged = {
        "tenant swapped, old signature": ".".join(
            [
                real.split(".")[0],
                jwt.encode({**claims, "tenant": "globex"}, "k" * 40).split(".")[1],
                real.split(".")[2],
            ]
        ),
        "wrong secret": jwt.encode(claims, "z" * 40, headers=kid),
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 120}, secret, headers=kid),
        "not yet valid": jwt.encode({**claims, "nbf": int(time.time()) + 120}, secret, headers=kid),
        "wrong aud": jwt.encode({**claims, "aud": "other"}, secret, headers=kid),
        "wrong iss": jwt.encode({**claims, "iss": "other"}, secret, headers=kid),
        "path-like kid": jwt.encode(claims, secret, headers={"kid": "../../jwt-secret"}),
        "unknown client": jwt.encode({**claims, "sub": str(uuid.uuid4())}, secret, headers=kid),
        "client id not a uuid": jwt.encode({**claims, "sub": "admin"}, secret, headers=kid),
        "stale credential version": jwt.encode({**claims, "cv": "0" * 16}, secret, headers=kid),
        "no cv": jwt.encode({k: v for k, v in claims.items() if k != "cv"}, secret, headers=kid),
        "alg none": f"{b64({'alg': 'none', **kid})}.{b64(claims)}.",
    }
    assert (await api.get("/v1/jobs", headers=auth(real))).status_code == 200
    for name, token in forged.items():
        r = await api.get("/v1/jobs", headers=auth(token))
        assert r.status_code == 401, name
        assert token not in r.text


async def test_a_token_minted_with_the_key_cannot_name_another_tenant_or_more_scopes(
    api: Client, bearer: Bearer, settings: Settings
) -> None:
    """Whoever holds the signing key and a client's ``sub`` and ``cv`` still gets only that
    client's tenant and scopes: the per-request lookup compares them with the client's row."""
    real = (await bearer("acme", ["jobs:read", "jobs:write"]))["Authorization"].split()[1]
    kid = {"kid": jwt.get_unverified_header(real)["kid"]}
    claims = jwt.decode(real, options={"verify_signature": False})

    def minted(**overrides: Any) -> dict[str, str]:
        return auth(jwt.encode({**claims, **overrides}, settings.jwt_secret, headers=kid))

    assert (await api.get("/v1/jobs", headers=minted())).status_code == 200
    assert (await api.get("/v1/jobs", headers=minted(scope="jobs:read"))).status_code == 200
    for escalated in (
        minted(tenant="globex"),
        minted(scope="jobs:read jobs:write admin"),
        minted(scope="admin"),
        minted(scope="jobs:work"),
    ):
        assert (await api.get("/v1/jobs", headers=escalated)).status_code == 401
    assert (await api.get("/v1/admin/clients", headers=minted(scope="admin"))).status_code == 401


# -- limits -------------------------------------------------------------------------------


async def test_submits_beyond_the_rate_limit_are_429_with_retry_after_and_write_nothing(
    settings: Settings, bearer: Bearer, store: JobStore
) -> None:
    limited = replace(settings, submit_rate_per_second=1.0, submit_burst=5, max_batch_jobs=5)
    async with served(limited) as api:
        h = await bearer()
        other = await bearer("globex")
        batch = {"jobs": [{"type": "noop"}] * 4}
        assert (await api.post("/v1/jobs/batch", json=batch, headers=h)).status_code == 202
        assert (await api.post("/v1/jobs", json={"type": "noop"}, headers=h)).status_code == 202
        r = await api.post("/v1/jobs", json={"type": "noop"}, headers=h)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["content-type"].startswith("application/problem+json")
        refused = await api.post("/v1/jobs/batch", json=batch, headers=h)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 3
        assert (await api.post("/v1/jobs", json={"type": "noop"}, headers=other)).status_code == 202
    assert len(await jobs_of(store, "acme")) == 5


async def test_long_polls_return_at_terminal_or_timeout_and_are_capped(
    settings: Settings, bearer: Bearer
) -> None:
    async with listening(replace(settings, max_waiters=2)) as api:
        h = await bearer()
        job = (
            await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=h)
        ).json()
        t0 = time.monotonic()
        r = await api.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 0.3}, headers=h)
        assert r.status_code == 200
        assert r.json()["status"] == "scheduled"
        assert time.monotonic() - t0 >= 0.3
        polls = [
            asyncio.create_task(
                api.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 5}, headers=h)
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        over = await api.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 5}, headers=h)
        assert over.status_code == 429
        assert over.headers["retry-after"] == "1"
        await api.post(f"/v1/jobs/{job['id']}/cancel", headers=h)
        answers = await asyncio.wait_for(asyncio.gather(*polls), 3)
        assert [a.json()["status"] for a in answers] == ["canceled", "canceled"]
        too_long = await api.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": 61}, headers=h)
        assert too_long.status_code == 422


async def test_the_clients_of_one_tenant_cannot_hold_every_long_poll(
    settings: Settings, bearer: Bearer
) -> None:
    capped = replace(settings, max_waiters=4, max_waiters_per_tenant=3, max_waiters_per_client=2)
    async with listening(capped) as api:
        clients = [await bearer("acme") for _ in range(4)]
        job = (
            await api.post(
                "/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=clients[0]
            )
        ).json()
        wait = f"/v1/jobs/{job['id']}/wait"
        held = [
            asyncio.create_task(api.get(wait, params={"timeout": 3}, headers=h))
            for h in clients[:3]
        ]
        await asyncio.sleep(0.3)
        refused = await api.get(wait, params={"timeout": 0}, headers=clients[3])
        assert refused.status_code == 429
        assert "this tenant" in refused.json()["detail"]
        other = await bearer("globex")
        theirs = (
            await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=other)
        ).json()
        r = await api.get(f"/v1/jobs/{theirs['id']}/wait", params={"timeout": 0}, headers=other)
        assert r.status_code == 200
        await asyncio.gather(*held)


async def test_the_clients_of_one_tenant_share_its_submit_budget(
    settings: Settings, bearer: Bearer, store: JobStore
) -> None:
    limited = replace(
        settings,
        submit_rate_per_second=1.0,
        submit_burst=5,
        submit_rate_per_tenant=1.0,
        submit_burst_per_tenant=8,
        max_batch_jobs=5,
    )
    async with served(limited) as api:
        first, second, other = await bearer("acme"), await bearer("acme"), await bearer("globex")
        assert (
            await api.post("/v1/jobs/batch", json={"jobs": [{"type": "noop"}] * 5}, headers=first)
        ).status_code == 202
        batch = {"jobs": [{"type": "noop"}] * 4}
        r = await api.post("/v1/jobs/batch", json=batch, headers=second)
        assert r.status_code == 429, "the tenant has 3 jobs of its burst left"
        assert int(r.headers["retry-after"]) == 1
        assert (await api.post("/v1/jobs/batch", json=batch, headers=other)).status_code == 202
    assert len(await jobs_of(store, "acme")) == 5


async def test_a_client_may_not_hold_every_long_poll_and_hanging_up_frees_its_slots(
    settings: Settings, bearer: Bearer
) -> None:
    async with listening(replace(settings, max_waiters=3, max_waiters_per_client=2)) as api:
        greedy, other = await bearer(), await bearer()
        job = (
            await api.post("/v1/jobs", json={"type": "noop", "delay_seconds": 60}, headers=greedy)
        ).json()
        wait = f"/v1/jobs/{job['id']}/wait"
        for _ in range(2):  # two polls that hang up after 0.3 s, long before their 30 s
            with pytest.raises(httpx.ReadTimeout):
                await api.get(wait, params={"timeout": 30}, headers=greedy, timeout=0.3)
        third = await api.get(wait, params={"timeout": 0}, headers=greedy)
        assert third.status_code == 200, "slots of polls whose client hung up must be free"
        held = [
            asyncio.create_task(api.get(wait, params={"timeout": 3}, headers=greedy))
            for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        refused = await api.get(wait, params={"timeout": 0}, headers=greedy)
        assert refused.status_code == 429
        assert "this client" in refused.json()["detail"]
        assert (await api.get(wait, params={"timeout": 0}, headers=other)).status_code == 200
        await asyncio.gather(*held)


async def test_a_bad_query_is_422_and_its_query_string_is_not_echoed(
    api: Client, bearer: Bearer
) -> None:
    h = await bearer()
    r = await api.get(
        "/v1/jobs", params={"limit": "abc", "type": "decode", "access_token": "SECRET-1"}, headers=h
    )
    assert r.status_code == 422
    assert "SECRET-1" not in r.text
    assert "limit" in json.dumps(r.json()["errors"])
    for bad in ("0.5", "yesterday", "1700000000"):
        r = await api.get("/v1/jobs", params={"created_before": bad}, headers=h)
        assert r.status_code == 422, bad


async def test_a_list_page_is_bounded_in_bytes_and_its_cursor_reaches_every_job(
    settings: Settings, bearer: Bearer
) -> None:
    budget = 1024 * 1024
    async with served(replace(settings, max_page_bytes=budget)) as api:
        h = await bearer()
        big = {"type": "noop", "payload": "x" * 250_000, "delay_seconds": 60}
        batch = await api.post("/v1/jobs/batch", json={"jobs": [big] * 10}, headers=h)
        assert batch.status_code == 202
        seen: list[str] = []
        sizes, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            r = await api.get("/v1/jobs", params=params, headers=h)
            assert r.status_code == 200
            sizes.append((len(r.json()["items"]), len(r.content)))
            seen += [job["id"] for job in r.json()["items"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(job["id"] for job in batch.json()["items"])
        assert len(set(seen)) == 10
        assert [n for n, _ in sizes] == [5, 5]  # the 6th job would start past 1 MiB
        assert all(size < budget + 300_000 for _, size in sizes)
    async with served(replace(settings, max_page_bytes=1000)) as api:
        one = await api.get("/v1/jobs", params={"limit": 500}, headers=h)
        assert len(one.json()["items"]) == 1, "a job larger than the budget has a page of its own"
        assert one.json()["next_cursor"]


async def test_a_list_limit_beyond_the_maximum_is_422(settings: Settings, bearer: Bearer) -> None:
    async with served(replace(settings, max_list_limit=20)) as api:
        h = await bearer()
        assert (await api.get("/v1/jobs", params={"limit": 20}, headers=h)).status_code == 200
        for limit in (21, 501, 0, -1):
            r = await api.get("/v1/jobs", params={"limit": limit}, headers=h)
            assert r.status_code == 422, limit
            assert "limit" in r.text


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("deep nesting", b'{"type": "noop", "payload": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        ("huge string type", b'{"type": "' + b"a" * 100_000 + b'"}'),
        ("lone surrogate", b'{"type": "noop", "payload": "\\ud800"}'),
        ("invalid utf-8", b'{"type": "noop", "payload": "\xff\xfe"}'),
        ("bidi and zero-width in type", '{"type": "noop\u202e\u200b"}'.encode()),
        ("fullwidth type", b'{"type": "\\uff4e\\uff4f\\uff4f\\uff50"}'),
        ("wrong type for priority", b'{"type": "noop", "priority": "high"}'),
        ("float for int", b'{"type": "noop", "max_attempts": 2.5}'),
        ("bool for int", b'{"type": "noop", "priority": true}'),
        ("huge number", b'{"type": "noop", "priority": 1' + b"0" * 400 + b"}"),
        ("NaN delay", b'{"type": "noop", "delay_seconds": NaN}'),
        ("array body", b'[{"type": "noop"}]'),
        ("empty body", b""),
        ("duplicate keys", b'{"type": "noop", "type": "Bad Type"}'),
    ],
)
async def test_hostile_bodies_are_4xx_and_write_nothing(
    api: Client, bearer: Bearer, store: JobStore, name: str, body: bytes
) -> None:
    h = {**await bearer(), "Content-Type": "application/json"}
    r = await api.post("/v1/jobs", content=body, headers=h)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
    assert r.headers["content-type"].startswith("application/problem+json")
    batch = await api.post("/v1/jobs/batch", content=b'{"jobs": [' + body + b"]}", headers=h)
    assert 400 <= batch.status_code < 500, (name, batch.status_code)
    assert await jobs_of(store, "acme") == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"type": "noop"}),
        ("/v1/jobs/batch", {"jobs": [{"type": "noop"}]}),
        ("/v1/admin/clients", {"name": "x", "tenant": "acme", "scopes": ["jobs:read"]}),
    ],
)
async def test_a_body_that_is_not_declared_json_is_415_and_writes_nothing(
    api: Client, bearer: Bearer, store: JobStore, path: str, body: dict[str, Any]
) -> None:
    h = await bearer(scopes=ALL_SCOPES)
    text = json.dumps(body)
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", None):
        headers = {**h, "Content-Type": media} if media else h
        r = await api.post(path, content=text, headers=headers)
        assert r.status_code == 415, (media, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert await jobs_of(store, "acme") == []
    assert len((await api.get("/v1/admin/clients", headers=h)).json()["items"]) == 1
    ok = {**h, "Content-Type": "application/json; charset=utf-8"}
    assert (await api.post(path, content=text, headers=ok)).status_code in (201, 202)


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "noop", "type": "echo"}',
        b'{"type": "noop", "payload": {"to": "a@example.com", "to": "b@example.com"}}',
        b'{"type": "noop", "payload": [1, {"deep": {"k": 1, "k": 1}}]}',
    ],
)
async def test_duplicate_keys_anywhere_are_400_and_write_nothing(
    api: Client, bearer: Bearer, store: JobStore, body: bytes
) -> None:
    h = {**await bearer(), "Content-Type": "application/json"}
    r = await api.post("/v1/jobs", content=body, headers=h)
    assert r.status_code == 400, r.text
    assert "duplicate key" in r.json()["detail"]
    batch = await api.post("/v1/jobs/batch", content=b'{"jobs": [' + body + b"]}", headers=h)
    assert batch.status_code == 400
    assert await jobs_of(store, "acme") == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "5"),
        ("max_attempts", "3"),
        ("timeout_seconds", "10"),
        ("timeout_seconds", 10.0),
        ("delay_seconds", "1"),
        ("priority", True),
        ("run_at", 1700000000),
    ],
)
async def test_a_value_of_the_wrong_json_type_is_422_naming_the_field(
    api: Client, bearer: Bearer, store: JobStore, field: str, value: Any
) -> None:
    h = await bearer()
    r = await api.post("/v1/jobs", json={"type": "noop", field: value}, headers=h)
    assert r.status_code == 422, r.text
    assert [e["key"] for e in r.json()["errors"]] == [field]
    batch = await api.post(
        "/v1/jobs/batch", json={"jobs": [{"type": "noop", field: value}]}, headers=h
    )
    assert batch.status_code == 422
    assert [e["key"] for e in batch.json()["errors"]] == [f"jobs[0].{field}"]
    assert await jobs_of(store, "acme") == []


async def test_oversized_batches_are_refused_whole(
    api: Client, bearer: Bearer, settings: Settings, store: JobStore
) -> None:
    h = await bearer()
    big = "x" * (settings.max_payload_bytes // 2)
    heavy = {"jobs": [{"type": "noop"}, {"type": "noop", "payload": big + big + "x"}]}
    assert (await api.post("/v1/jobs/batch", json=heavy, headers=h)).status_code == 413
    too_many = {"jobs": [{"type": "noop"}] * (settings.max_batch_jobs + 1)}
    assert (await api.post("/v1/jobs/batch", json=too_many, headers=h)).status_code == 422
    assert await jobs_of(store, "acme") == []


# -- secrets hygiene ----------------------------------------------------------------------


async def test_no_secret_or_token_reaches_logs_traces_or_error_bodies(
    settings: Settings,
    bearer: Bearer,
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with served(settings, tracer_provider) as api:
        admin = await bearer(scopes=["admin"])
        created = await new_client(api, admin)
        cid, secret = created["client_id"], created["client_secret"]
        token = (await token_for(api, cid, secret)).json()["access_token"]
        rotated = (await api.post(f"/v1/admin/clients/{cid}/rotate", headers=admin)).json()
        answers = [
            await token_for(api, cid, secret),  # the old secret
            await api.post(
                "/v1/auth/token",
                content=f"grant_type=client_credentials&client_id={cid}&client_secret={secret}&x=%ZZ",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            await api.post("/v1/auth/token", data={"grant_type": secret, "client_secret": secret}),
            await api.get("/v1/jobs", headers=auth(token)),  # rotated away
            await api.get("/v1/admin/clients", headers=admin),
        ]
        seen += [a.text + json.dumps(dict(a.headers)) for a in answers]
    ours = [r for r in caplog.records if not r.name.startswith("httpx")]  # the test's client
    seen += [r.getMessage() + json.dumps(r.__dict__, default=str) for r in ours]
    seen += [
        json.dumps(dict(s.attributes or {}), default=str) + s.name
        for s in spans.get_finished_spans()
    ]
    seen += [
        json.dumps([dict(e.attributes or {}) for e in s.events], default=str)
        for s in spans.get_finished_spans()
    ]
    assert spans.get_finished_spans()
    for text in seen:
        for leaked in (secret, rotated["client_secret"], token, admin["Authorization"][7:]):
            assert leaked not in text


# -- asymmetric keys and an external IdP ------------------------------------------------


async def test_eddsa_mode_serves_a_jwks_and_refuses_hs256_signed_with_the_public_key(
    settings: Settings, bearer: Bearer, tmp_path: Any
) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "jwt.pem").write_bytes(pem(private))
    eddsa = replace(settings, jwt_algorithm="EdDSA", jwt_private_key_file=str(tmp_path / "jwt.pem"))
    async with served(eddsa) as api:
        jwks = (await api.get("/.well-known/jwks.json")).json()
        [key] = jwks["keys"]
        assert key["alg"] == "EdDSA"
        assert "d" not in key
        admin = await bearer(scopes=["admin"], signed_by=eddsa)
        assert jwt.get_unverified_header(admin["Authorization"][7:])["alg"] == "EdDSA"
        created = await new_client(api, admin)
        token = (await token_for(api, created["client_id"], created["client_secret"])).json()
        access = token["access_token"]
        assert jwt.decode(access, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="jobq")
        assert (await api.get("/v1/jobs", headers=auth(access))).status_code == 200
        claims = jwt.decode(access, options={"verify_signature": False})
        forged = hand_signed(
            {"alg": "HS256", "typ": "JWT", "kid": key["kid"]},
            {**claims, "scope": "admin jobs:read"},
            pem(private, private=False),
        )
        assert (await api.get("/v1/admin/clients", headers=auth(forged))).status_code == 401
        hs = await bearer(scopes=["admin"])  # signed with the HS256 secret: not in the ring
        assert (await api.get("/v1/admin/clients", headers=hs)).status_code == 401


@asynccontextmanager
async def jwks_server(document: dict[str, Any]) -> AsyncIterator[tuple[str, list[float]]]:
    """Serves ``document`` over HTTP on loopback; yields its URL and the fetch times."""
    fetches: list[float] = []
    body = json.dumps(document).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        fetches.append(time.monotonic())
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/jwks", fetches
    finally:
        server.close()
        await server.wait_closed()


async def test_tokens_of_an_external_oidc_issuer_are_accepted_with_mapped_claims(
    settings: Settings, bearer: Bearer
) -> None:
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key())), "kid": "k1"}
    async with jwks_server({"keys": [jwk]}) as (url, fetches):
        oidc = replace(
            settings,
            oidc_issuer="https://idp.example",
            oidc_jwks_url=url,
            oidc_audience="jobq-api",
            oidc_tenant_claim="org",
            oidc_scope_claim="roles",
        )

        def idp_token(**overrides: Any) -> dict[str, str]:
            now = int(time.time())
            claims = {"iss": "https://idp.example", "aud": "jobq-api", "sub": "alice",
                      "org": "acme", "roles": ["jobs:write", "jobs:read"], "iat": now,
                      "exp": now + 300, **overrides}  # fmt: skip
            kid = str(claims.pop("kid", "k1"))
            return auth(jwt.encode(claims, idp_key, algorithm="RS256", headers={"kid": kid}))

        async with listening(oidc) as api:
            r = await api.post("/v1/jobs", json={"type": "noop"}, headers=idp_token())
            assert r.status_code == 202, r.text
            mine = await bearer("acme")  # a local client of the same tenant sees the job
            assert (await api.get(f"/v1/jobs/{r.json()['id']}", headers=mine)).status_code == 200
            other = idp_token(org="globex")
            assert (await api.get(f"/v1/jobs/{r.json()['id']}", headers=other)).status_code == 404
            assert (await api.get("/v1/admin/clients", headers=idp_token())).status_code == 403
            for bad in (
                idp_token(aud="jobq"),
                idp_token(exp=int(time.time()) - 100),
                idp_token(org=None),
                idp_token(kid="unknown"),
            ):
                assert (await api.get("/v1/jobs", headers=bad)).status_code == 401
            admin = idp_token(roles=["admin", "jobs:read"])  # admin stays with jobq's clients
            assert (await api.get("/v1/admin/clients", headers=admin)).status_code == 403
            assert (await api.get("/v1/jobs", headers=admin)).status_code == 200
            for _ in range(20):  # made-up kids do not make the API hammer the IdP
                await api.get("/v1/jobs", headers=idp_token(kid=str(uuid.uuid4())))
            assert len(fetches) <= 2


async def test_dead_letter_filters_and_cursors_are_values_never_sql_or_other_tenants(
    api: Client, bearer: Bearer
) -> None:
    h = await bearer("acme", ["jobs:read", "jobs:write", "jobs:work"])
    job = await dead_job(api, h, error="SmtpRefused")
    for error in ["x'OR'1'='1", 'SmtpRefused"--', "%", "SmtpRefused'||'", "Smtp%"]:
        page = await api.get("/v1/dead", params={"error": error}, headers=h)
        assert page.status_code == 200, page.text
        assert page.json()["items"] == []
    for error in ["a b", "x" * 201, "\u0000"]:
        assert (await api.get("/v1/dead", params={"error": error}, headers=h)).status_code == 422
    # A forged cursor is only a position in the caller's own list.
    rival = await bearer("rival", ["jobs:read", "jobs:write"])
    forged = dead_cursor(datetime(9999, 1, 1, tzinfo=UTC), uuid.UUID(int=2**128 - 1))
    page = await api.get("/v1/dead", params={"cursor": forged}, headers=rival)
    assert page.json()["items"] == []
    # Another tenant's job id is not replayed, purged or shown, and its tenant is not named.
    replayed = await api.post("/v1/dead/replay", json={"ids": [job["id"]]}, headers=rival)
    assert replayed.json()["skipped"] == [{"id": job["id"], "reason": "not_found", "status": None}]
    purged = await api.post("/v1/dead/purge", json={"dry_run": False}, headers=rival)
    assert purged.json()["deleted"] == 0
    assert "acme" not in replayed.text + purged.text
    assert (await api.get(f"/v1/dead/{job['id']}", headers=h)).json()["job"]["status"] == "dead"
