"""Result callbacks on the real PostgreSQL and RabbitMQ: jobs submitted through the API, run by
in-process workers, delivered by the scheduler's delivery loop to an HTTP receiver on
127.0.0.1 (reachable because ``JOBQ_WEBHOOK_ALLOW`` names it, as an operator would)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.callbacks import CALLBACKS, Callbacks
from shared.callbacks import CallbackPolicy
from shared.config import Settings
from shared.db.callbacks import CallbackStore
from shared.db.engine import make_engine
from shared.db.migrate import alembic_config, upgrade
from shared.db.sweeps import SweepStore
from shared.liveness import Liveness
from shared.metrics import Metrics
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker, wait_for
from tests.integration.test_webhook import Request, answer, reply
from tests.integration.test_webhook import serving as receiving
from tests.services import create_database, drop_database

Client = AsyncTestClient[Litestar]
pytestmark = pytest.mark.integration
README = Path(__file__).parents[2] / "README.md"


def readme_verifier() -> Callable[[str, str, bytes], bool]:
    """The verification function of the README's "Result callbacks", run as it is shown."""
    section = README.read_text().split("\n## Result callbacks\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verify: Callable[[str, str, bytes], bool] = namespace["verify_jobq_signature"]
    return verify


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Receivers on loopback allowed; three attempts, a tenth of a second apart at most."""
    return replace(
        base_settings,
        webhook_allow="127.0.0.0/8",
        callback_max_attempts=3,
        callback_backoff_seconds=0.05,
        callback_backoff_max_seconds=0.1,
        callback_timeout_seconds=3.0,
    )


def loop_of(
    settings: Settings, engine: AsyncEngine, metrics: Metrics | None = None, **kw: Any
) -> Callbacks:
    return Callbacks(
        CallbackPolicy.from_settings(settings), CallbackStore(engine), metrics or Metrics("scheduler"),
        Liveness(60, [CALLBACKS]), interval=0.05, **kw,
    )  # fmt: skip


@asynccontextmanager
async def delivering(*loops: Callbacks) -> AsyncIterator[None]:
    """Run delivery loops for the duration of the block."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop.run(stop)) for loop in loops]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def submit(api: Client, headers: dict[str, str], url: str, **job: Any) -> dict[str, Any]:
    r = await api.post(
        "/v1/jobs", json={"type": "echo", "payload": {"n": 1}, "callback_url": url, **job},
        headers=headers,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    return dict(r.json())


async def canceled(api: Client, headers: dict[str, str], url: str) -> dict[str, Any]:
    """A job finished without a worker: delayed, then canceled."""
    job = await submit(api, headers, url, delay_seconds=3600)
    r = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def died(api: Client, headers: dict[str, str], url: str) -> dict[str, Any]:
    """A job a worker will end dead at its first attempt."""
    return await submit(api, headers, url, type="fail", payload={"permanent": True})


async def deliveries(api: Client, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/jobs/{job_id}/deliveries", headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def callback_secret(engine: AsyncEngine, tenant: str) -> str:
    async with engine.connect() as conn:
        secret: str = (
            await conn.execute(
                sa.text("SELECT callback_secret FROM api_clients WHERE tenant = :t"), {"t": tenant}
            )
        ).scalar_one()
    return secret


async def test_a_finished_job_is_delivered_once_signed_as_the_readme_verifies(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings, start_worker: StartWorker
) -> None:
    await start_worker()
    h = await bearer()
    metrics = Metrics("scheduler")
    async with (
        receiving(answer(200, b"thanks")) as receiver,
        delivering(loop_of(settings, engine, metrics)),
    ):
        job = await submit(api, h, receiver.url("/hook?x=1"))
        [done] = await wait_for(lambda: deliveries(api, h, job["id"]))
        assert len(receiver.requests) == 1
    [sent] = receiver.requests
    shown = (await api.get(f"/v1/jobs/{job['id']}", headers=h)).json()
    assert (sent.method, sent.path) == ("POST", "/hook?x=1")
    assert json.loads(sent.body) == shown
    assert shown["status"] == "succeeded"
    assert shown["callback_url"] == receiver.url("/hook?x=1")
    assert sent.headers["x-jobq-event"] == "job.succeeded"
    assert sent.headers["x-jobq-delivery"] == done["id"]
    assert sent.headers["content-type"] == "application/json"
    verify = readme_verifier()
    secret = await callback_secret(engine, "acme")
    assert verify(secret, sent.headers["x-jobq-signature"], sent.body)
    assert not verify(secret, sent.headers["x-jobq-signature"], sent.body + b" ")
    assert not verify("jqcb_another", sent.headers["x-jobq-signature"], sent.body)
    assert done["outcome"] == "delivered"
    assert (done["attempt"], done["status_code"], done["response"]) == (1, 200, "thanks")
    assert done["event"] == "job.succeeded"
    assert done["finished_at"] == shown["finished_at"]
    assert await CallbackStore(engine).claim(10, 1.0) == []  # nothing more is owed
    assert b'jobq_callback_attempts_total{outcome="delivered"} 1.0' in metrics.exposition()


async def test_a_failing_receiver_is_retried_with_backoff_then_given_up(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    h = await bearer()
    async with (
        receiving(answer(503, b"busy" * 1000)) as receiver,
        delivering(loop_of(settings, engine)),
    ):
        job = await canceled(api, h, receiver.url())
        attempts = await wait_for(
            lambda: _when(deliveries(api, h, job["id"]), lambda d: len(d) == 3)
        )
    assert len(receiver.requests) == 3
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["outcome"] for a in attempts] == ["retrying", "retrying", "gave_up"]
    assert {a["status_code"] for a in attempts} == {503}
    assert {a["error"] for a in attempts} == {"answered HTTP 503"}
    assert all(len(a["response"]) == 1024 for a in attempts)  # the excerpt, capped
    for earlier, later in itertools.pairwise(attempts):
        assert earlier["next_attempt_at"] is not None
        assert later["at"] >= earlier["next_attempt_at"]
    assert attempts[-1]["next_attempt_at"] is None
    assert await CallbackStore(engine).claim(10, 1.0) == []


async def _when(read: Any, ok: Callable[[Any], bool]) -> Any:
    value = await read
    return value if ok(value) else None


async def test_dead_and_canceled_jobs_are_delivered_too(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings, start_worker: StartWorker
) -> None:
    await start_worker()
    h = await bearer()
    async with receiving(answer(204)) as receiver, delivering(loop_of(settings, engine)):
        dead = await submit(
            api, h, receiver.url("/dead"), type="fail", payload={"message": "no", "permanent": True}
        )
        ended = await canceled(api, h, receiver.url("/canceled"))
        await wait_for(lambda: len(receiver.requests) == 2)
    events = {
        r.path: (r.headers["x-jobq-event"], json.loads(r.body)["status"]) for r in receiver.requests
    }
    assert events == {"/dead": ("job.dead", "dead"), "/canceled": ("job.canceled", "canceled")}
    for job in (dead, ended):
        [attempt] = await deliveries(api, h, job["id"])
        assert (attempt["outcome"], attempt["status_code"]) == ("delivered", 204)


async def test_a_job_retried_and_finished_again_is_delivered_again(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings, start_worker: StartWorker
) -> None:
    await start_worker()
    h = await bearer()
    async with receiving(answer(200)) as receiver, delivering(loop_of(settings, engine)):
        job = await died(api, h, receiver.url())
        await wait_for(lambda: len(receiver.requests) == 1)
        assert (await api.post(f"/v1/jobs/{job['id']}/retry", headers=h)).status_code == 200
        await wait_for(lambda: len(receiver.requests) == 2)
        attempts = await wait_for(
            lambda: _when(deliveries(api, h, job["id"]), lambda d: len(d) == 2)
        )
    first, second = (json.loads(r.body) for r in receiver.requests)
    assert first["finished_at"] < second["finished_at"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "delivered"), (1, "delivered")]
    assert [a["finished_at"] for a in attempts] == [first["finished_at"], second["finished_at"]]


async def test_a_name_that_resolves_to_a_private_address_is_refused_at_delivery(
    bearer: Bearer, api: Client, engine: AsyncEngine, base_settings: Settings
) -> None:
    """With the guard on (no allow-list): the receiver on loopback gets nothing."""
    h = await bearer()
    guarded = replace(base_settings, webhook_allow="")

    async def rebinding(host: str) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"] if host == "hooks.example.com" else []

    async with receiving(answer(200)) as receiver:
        job = await canceled(api, h, f"http://hooks.example.com:{receiver.port}/")
        async with delivering(loop_of(guarded, engine, resolve=rebinding)):
            [attempt] = await wait_for(lambda: deliveries(api, h, job["id"]))
        assert receiver.connections == 0
    assert attempt["outcome"] == "gave_up"
    assert attempt["status_code"] is None
    assert attempt["error"] == (
        "refused destination hooks.example.com (127.0.0.1): loopback address"
    )


#: Callback URLs a guarded API refuses at submit, and what its answer names.
REFUSED = [
    ("http://127.0.0.1:9/", "loopback"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://localhost:8080/", "loopback"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("ftp://hooks.example.com/", "callback_url"),
    ("https://hooks.example.com/" + "a" * 2048, "2048"),
]


async def test_obviously_private_or_malformed_callback_urls_are_refused_at_submit(
    bearer: Bearer, base_settings: Settings
) -> None:
    """On an API without an allow-list (the one under test allows loopback), single and
    batch submits alike."""
    from services.api.app import create_app

    guarded = replace(base_settings, webhook_allow="")
    h = await bearer(signed_by=guarded)
    async with AsyncTestClient(app=create_app(guarded)) as strict:
        for url, says in REFUSED:
            r = await strict.post("/v1/jobs", json={"type": "echo", "callback_url": url}, headers=h)
            assert r.status_code == 422, (url, r.text)
            assert says in r.json()["detail"] + json.dumps(r.json().get("errors")), (url, r.text)
            batch = await strict.post(
                "/v1/jobs/batch",
                json={"jobs": [{"type": "echo"}, {"type": "echo", "callback_url": url}]},
                headers=h,
            )
            assert batch.status_code == 422, (url, batch.text)
        ok = await strict.post(
            "/v1/jobs", json={"type": "echo", "callback_url": "https://hooks.example.com/j"},
            headers=h,
        )  # fmt: skip
        assert ok.status_code == 202, ok.text


async def test_two_delivery_loops_deliver_each_job_once(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    h = await bearer()
    seen: list[str] = []

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        seen.append(json.loads(request.body)["id"])
        await asyncio.sleep(0.05)
        writer.write(reply(200))

    async with receiving(slow) as receiver:
        r = await api.post(
            "/v1/jobs/batch",
            json={
                "jobs": [{"type": "echo", "delay_seconds": 3600, "callback_url": receiver.url()}]
                * 30
            },
            headers=h,
        )
        ids = [j["id"] for j in r.json()["items"]]
        for job_id in ids:
            assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=h)).status_code == 200
        one, two = (replace(settings, callback_concurrency=4) for _ in range(2))
        async with delivering(loop_of(one, engine), loop_of(two, engine)):
            await wait_for(lambda: len(seen) >= 30)
            assert await CallbackStore(engine).claim(100, 1.0) == []
    assert sorted(seen) == sorted(ids)
    for job_id in ids:
        assert [a["outcome"] for a in await deliveries(api, h, job_id)] == ["delivered"]


async def test_a_claim_whose_scheduler_died_runs_out_and_is_delivered(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    h = await bearer()
    async with receiving(answer(200)) as receiver:
        job = await canceled(api, h, receiver.url())
        [taken] = await CallbackStore(engine).claim(10, 0.5)  # ...and its scheduler died
        assert taken.attempt == 1
        async with delivering(loop_of(settings, engine)):
            [attempt] = await wait_for(lambda: deliveries(api, h, job["id"]))
        assert len(receiver.requests) == 1
    assert (attempt["attempt"], attempt["outcome"]) == (2, "delivered")


async def test_a_rotated_secret_signs_beside_the_new_one_for_its_grace(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    admin = await bearer(tenant="ops", scopes=("admin",))
    h = await bearer()
    old = await callback_secret(engine, "acme")
    async with engine.connect() as conn:
        client_id = (
            await conn.execute(sa.text("SELECT id FROM api_clients WHERE tenant = 'acme'"))
        ).scalar_one()
    path = f"/v1/admin/clients/{client_id}/rotate-callback-secret"
    rotated = await api.post(path, headers=admin)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["callback_secret"]
    assert new != old
    assert rotated.json()["previous_valid_until"]
    assert (await api.post(path, headers=h)).status_code == 403
    assert (
        await api.post(f"/v1/admin/clients/{uuid.uuid4()}/rotate-callback-secret", headers=admin)
    ).status_code == 404
    verify = readme_verifier()
    async with receiving(answer(200)) as receiver, delivering(loop_of(settings, engine)):
        await canceled(api, h, receiver.url())
        await wait_for(lambda: len(receiver.requests) == 1)
        assert (await api.post(f"{path}?grace_seconds=0", headers=admin)).status_code == 200
        newest = await callback_secret(engine, "acme")
        await canceled(api, h, receiver.url())
        await wait_for(lambda: len(receiver.requests) == 2)
    during, after = (r.headers["x-jobq-signature"] for r in receiver.requests)
    body = receiver.requests[0].body
    assert during.count("v1=") == 2
    assert verify(old, during, body)
    assert verify(new, during, body)
    assert after.count("v1=") == 1
    assert verify(newest, after, receiver.requests[1].body)
    assert not verify(new, after, receiver.requests[1].body)


async def test_deliveries_are_the_tenants_own(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    h = await bearer()
    other = await bearer(tenant="globex")
    unread = await bearer(scopes=("jobs:write",))
    async with receiving(answer(200)) as receiver, delivering(loop_of(settings, engine)):
        job = await canceled(api, h, receiver.url())
        await wait_for(lambda: deliveries(api, h, job["id"]))
    path = f"/v1/jobs/{job['id']}/deliveries"
    assert (await api.get(path, headers=other)).status_code == 404
    assert (await api.get(f"/v1/jobs/{uuid.uuid4()}/deliveries", headers=h)).status_code == 404
    assert (await api.get(path, headers=unread)).status_code == 403
    assert (await api.get(path)).status_code == 401
    plain = await api.post("/v1/jobs", json={"type": "echo"}, headers=h)
    assert await deliveries(api, h, plain.json()["id"]) == []


async def test_retention_deletes_a_jobs_attempts_with_it(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    h = await bearer()
    async with receiving(answer(200)) as receiver, delivering(loop_of(settings, engine)):
        kept = await canceled(api, h, receiver.url())
        gone = await canceled(api, h, receiver.url())
        await wait_for(lambda: len(receiver.requests) == 2)
        await wait_for(lambda: deliveries(api, h, kept["id"]))
        await wait_for(lambda: deliveries(api, h, gone["id"]))
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE jobs SET finished_at = finished_at - interval '1 day' WHERE id = :id"),
            {"id": gone["id"]},
        )
    assert await SweepStore(engine).delete_finished("default", "canceled", 3600.0, 100) == 1
    async with engine.connect() as conn:
        left = (await conn.execute(sa.text("SELECT job_id FROM callback_deliveries"))).scalars()
        assert [str(i) for i in left] == [kept["id"]]


async def test_a_new_finish_does_not_wait_out_the_backoff_of_the_last_one(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings, start_worker: StartWorker
) -> None:
    """The first finish's delivery failed and backs off for up to an hour; the job is retried
    and finishes again: that finish is delivered at once."""
    await start_worker()
    h = await bearer()
    patient = replace(settings, callback_backoff_seconds=3600, callback_backoff_max_seconds=3600)
    answers = iter([503])

    async def busy_once(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(next(answers, 200)))

    async with receiving(busy_once) as receiver, delivering(loop_of(patient, engine)):
        job = await died(api, h, receiver.url())
        [first] = await wait_for(lambda: deliveries(api, h, job["id"]))
        assert first["outcome"] == "retrying"
        assert (await api.post(f"/v1/jobs/{job['id']}/retry", headers=h)).status_code == 200
        attempts = await wait_for(
            lambda: _when(deliveries(api, h, job["id"]), lambda d: len(d) == 2)
        )
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "retrying"), (1, "delivered")]
    assert attempts[0]["finished_at"] < attempts[1]["finished_at"]
    assert attempts[1]["at"] < attempts[0]["next_attempt_at"]


async def test_the_migration_gives_existing_clients_a_secret_and_goes_back(
    base_settings: Settings,
) -> None:
    before = ScriptDirectory.from_config(alembic_config()).get_revision("0012").down_revision
    assert isinstance(before, str)
    url = await create_database(base_settings.database_url, "jobq_cbmigrate", revision=before)
    old = replace(base_settings, database_url=url)
    engine = make_engine(old, "upgrade-test", pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO api_clients (id, name, tenant, scopes, secret_hash)"
                    " SELECT gen_random_uuid(), 'c', 'acme', '{jobs:read}', 'h'"
                    " FROM generate_series(1, 3)"
                )
            )
        await upgrade(old)
        async with engine.connect() as conn:
            secrets = (
                (await conn.execute(sa.text("SELECT callback_secret FROM api_clients")))
                .scalars()
                .all()
            )
        async with engine.connect() as conn:  # and back: the downgrade runs too
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), before))
            await conn.commit()
        await upgrade(old)
    finally:
        await engine.dispose()
        await drop_database(url)
    assert len(set(secrets)) == 3
    assert all(re.fullmatch(r"jqcb_[0-9a-f]{64}", s) for s in secrets)


async def test_a_dead_letter_purge_deletes_the_attempts_of_its_jobs(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings, start_worker: StartWorker
) -> None:
    await start_worker()
    h = await bearer()
    async with receiving(answer(200)) as receiver, delivering(loop_of(settings, engine)):
        job = await died(api, h, receiver.url())
        await wait_for(lambda: deliveries(api, h, job["id"]))
    purged = await api.post("/v1/dead/purge", json={"dry_run": False}, headers=h)
    assert purged.json()["deleted"] == 1, purged.text
    async with engine.connect() as conn:
        left = (await conn.execute(sa.text("SELECT count(*) FROM callback_deliveries"))).scalar()
    assert left == 0


async def test_an_http_worker_and_an_expired_lease_finishing_jobs_owe_deliveries_too(
    bearer: Bearer, api: Client, engine: AsyncEngine, settings: Settings
) -> None:
    """Paths that know nothing of callbacks: an HTTP worker's complete, and the scheduler's
    sweep of a lease that ran out with no attempt left (its worker died)."""
    h = await bearer(scopes=("jobs:write", "jobs:read", "jobs:work"))
    async with receiving(answer(200)) as receiver:
        leased = await submit(api, h, receiver.url("/leased"), type="test.record")
        expired = await submit(api, h, receiver.url("/expired"), type="test.record", max_attempts=1)
        r = await api.post("/v1/leases", json={"types": ["test.record"], "max_jobs": 2}, headers=h)
        held = {j["id"]: j["lease_id"] for j in r.json()["items"]}
        assert set(held) == {leased["id"], expired["id"]}
        done = await api.post(
            f"/v1/jobs/{leased['id']}/complete", json={"lease_id": held[leased["id"]]}, headers=h
        )
        assert done.status_code == 200, done.text
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
                {"id": expired["id"]},
            )
        [dead], _ = await SweepStore(engine).expire_leases(10)
        assert dead.dead
        async with delivering(loop_of(settings, engine)):
            await wait_for(lambda: len(receiver.requests) == 2)
    events = {r.path: r.headers["x-jobq-event"] for r in receiver.requests}
    assert events == {"/leased": "job.succeeded", "/expired": "job.dead"}
