"""Dead letters as a resource (``/v1/dead``) on the real PostgreSQL and RabbitMQ: jobs made dead
through the API's own HTTP-worker calls (a non-retryable failure: dead at once, with the error
class the test names), or by a real worker; then listed, shown, replayed and purged."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.loop import Scheduler
from shared.config import Settings
from shared.db.jobs import JobStore
from shared.domain import JobStatus
from shared.messaging import Broker
from tests.conftest import Bearer
from tests.integration.conftest import StartWorker, listening, ticking, wait_for

Client = AsyncTestClient[Litestar]
pytestmark = pytest.mark.integration
EVERY = ("jobs:write", "jobs:read", "jobs:work")
ADMIN = (*EVERY, "admin")


async def dead_job(
    api: Client | httpx.AsyncClient,
    h: dict[str, str],
    type: str = "mail.send",
    queue: str = "default",
    error: str = "SmtpRefused",
    payload: Any = None,
) -> dict[str, Any]:
    """A job submitted, leased and failed for good: ``dead`` with one error of class
    ``error``. ``h`` needs ``jobs:write`` and ``jobs:work``."""
    body = {"type": type, "queue": queue, "payload": payload or {"to": "x"}, "max_attempts": 3}
    job = (await api.post("/v1/jobs", json=body, headers=h)).json()
    leased = await api.post(
        "/v1/leases", json={"queues": [queue], "types": [type], "max_jobs": 1}, headers=h
    )
    [lease] = [j for j in leased.json()["items"] if j["id"] == job["id"]]
    failed = await api.post(
        f"/v1/jobs/{job['id']}/fail",
        json={"lease_id": lease["lease_id"], "message": f"{error} said no",
              "error_type": error, "retryable": False},
        headers=h,
    )  # fmt: skip
    assert failed.json()["status"] == "dead", failed.text
    dead: dict[str, Any] = failed.json()
    return dead


def ids(page: dict[str, Any]) -> list[str]:
    return [j["id"] for j in page["items"]]


async def replays_of(engine: AsyncEngine, job_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT * FROM dead_letter_replays WHERE job_id = :id ORDER BY at"),
            {"id": uuid.UUID(job_id)},
        )
        return list(rows)


async def test_the_list_filters_by_queue_type_error_and_time_newest_death_first(
    api: Client, bearer: Bearer
) -> None:
    h = await bearer("acme", EVERY)
    first = await dead_job(api, h, "mail.send", "default", "SmtpRefused")
    between = datetime.now(UTC)
    second = await dead_job(api, h, "report.build", "other", "Timeout")
    third = await dead_job(api, h, "mail.send", "other", "SmtpRefused")
    alive = (await api.post("/v1/jobs", json={"type": "mail.send"}, headers=h)).json()
    await dead_job(api, await bearer("rival", EVERY))  # another tenant's

    everything = (await api.get("/v1/dead", headers=h)).json()
    assert ids(everything) == [third["id"], second["id"], first["id"]]
    assert alive["id"] not in ids(everything)
    assert everything["items"][0]["last_error"]["type"] == "SmtpRefused"
    for query, expected in [
        ({"queue": "other"}, [third, second]),
        ({"type": "mail.send"}, [third, first]),
        ({"error": "SmtpRefused"}, [third, first]),
        ({"error": "Timeout", "queue": "other"}, [second]),
        ({"since": between.isoformat()}, [third, second]),
        ({"until": between.isoformat()}, [first]),
        ({"error": "Nope"}, []),
    ]:
        page = (await api.get("/v1/dead", params=query, headers=h)).json()
        assert ids(page) == [j["id"] for j in expected], query

    # Keyset pages on when they died: every job once, in order.
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/dead", params=params, headers=h)).json()
        seen += ids(page)
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ids(everything)
    start = await api.get("/v1/dead", params={"cursor": "A" * 32}, headers=h)
    assert start.json()["items"] == []  # well formed: 1970, before every death
    assert (await api.get("/v1/dead", params={"cursor": "x"}, headers=h)).status_code == 422
    since_after_until = {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}
    assert (await api.get("/v1/dead", params=since_after_until, headers=h)).status_code == 422


async def test_the_list_reads_the_dead_jobs_index(api: Client, engine: AsyncEngine) -> None:
    """``GET /v1/dead``'s query, filtered and paged, walks ``jobs_dead``, not the table."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            (
                await conn.execute(
                    sa.text(
                        "EXPLAIN SELECT * FROM jobs WHERE tenant = 'acme' AND status = 'dead'"
                        " AND queue = 'default' AND last_error->>'type' = 'X'"
                        " AND finished_at >= now() - interval '1 day'"
                        " AND (finished_at, id) < (now(), gen_random_uuid())"
                        " ORDER BY finished_at DESC, id DESC LIMIT 50"
                    )
                )
            ).scalars()
        )
    assert "jobs_dead" in plan, plan
    assert "Sort" not in plan, plan


async def test_show_has_the_error_history_and_another_tenants_id_is_404(
    api: Client, bearer: Bearer
) -> None:
    h = await bearer("acme", EVERY)
    job = await dead_job(api, h, error="SmtpRefused")
    shown = (await api.get(f"/v1/dead/{job['id']}", headers=h)).json()
    assert shown["job"]["status"] == "dead"
    assert [e["type"] for e in shown["job"]["errors"]] == ["SmtpRefused"]
    assert shown["replays"] == []
    rival = await bearer("rival", EVERY)
    for path in (f"/v1/dead/{job['id']}", f"/v1/dead/{uuid.uuid4()}"):
        assert (await api.get(path, headers=rival)).status_code == 404
    alive = (await api.post("/v1/jobs", json={"type": "mail.send"}, headers=h)).json()
    assert (await api.get(f"/v1/dead/{alive['id']}", headers=h)).status_code == 404


async def test_only_an_admin_may_name_another_tenant(api: Client, bearer: Bearer) -> None:
    acme = await bearer("acme", EVERY)
    job = await dead_job(api, acme)
    rival = await bearer("rival", EVERY)
    admin = await bearer("ops", ADMIN)
    as_acme = {"tenant": "acme"}
    for method, path, kwargs in [
        ("GET", "/v1/dead", {"params": as_acme}),
        ("GET", f"/v1/dead/{job['id']}", {"params": as_acme}),
        ("POST", "/v1/dead/replay", {"json": {"ids": [job["id"]], **as_acme}}),
        ("POST", "/v1/dead/purge", {"json": {"dry_run": False, **as_acme}}),
    ]:
        r = await api.request(method, path, headers=rival, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 403, (path, r.text)
    # Naming one's own tenant is no privilege.
    assert ids((await api.get("/v1/dead", params=as_acme, headers=acme)).json()) == [job["id"]]
    # The admin's own tenant has none; acme's, named, are there.
    assert ids((await api.get("/v1/dead", headers=admin)).json()) == []
    assert ids((await api.get("/v1/dead", params=as_acme, headers=admin)).json()) == [job["id"]]
    shown = await api.get(f"/v1/dead/{job['id']}", params=as_acme, headers=admin)
    assert shown.json()["job"]["id"] == job["id"]
    done = await api.post("/v1/dead/replay", json={"ids": [job["id"]], **as_acme}, headers=admin)
    assert [r["id"] for r in done.json()["replayed"]] == [job["id"]]
    assert (await api.get(f"/v1/jobs/{job['id']}", headers=acme)).json()["status"] == "queued"


async def test_a_replay_requeues_with_a_fresh_budget_and_is_audited(
    api: Client, bearer: Bearer, engine: AsyncEngine, broker: Broker
) -> None:
    h = await bearer("acme", EVERY)
    dead = await dead_job(api, h)
    alive = (await api.post("/v1/jobs", json={"type": "mail.send"}, headers=h)).json()
    theirs = await dead_job(api, await bearer("rival", EVERY))
    missing = str(uuid.uuid4())
    r = await api.post(
        "/v1/dead/replay",
        json={"ids": [dead["id"], alive["id"], theirs["id"], missing], "queue": "other"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["repeated"] is False
    assert out["replayed"] == [
        {"id": dead["id"], "queue_before": "default", "queue_after": "other",
         "payload_replaced": False}
    ]  # fmt: skip
    assert sorted((s["id"], s["reason"], s["status"]) for s in out["skipped"]) == sorted(
        [(alive["id"], "not_dead", "queued"), (theirs["id"], "not_found", None),
         (missing, "not_found", None)]
    )  # fmt: skip
    job = (await api.get(f"/v1/jobs/{dead['id']}", headers=h)).json()
    assert (job["status"], job["attempts"], job["queue"]) == ("queued", 0, "other")
    assert job["finished_at"] is None
    assert [e["type"] for e in job["errors"]] == ["SmtpRefused"]  # the history stays
    [audit] = await replays_of(engine, dead["id"])
    assert (audit.tenant, audit.queue_before, audit.queue_after) == ("acme", "default", "other")
    assert audit.payload_replaced is False
    assert audit.payload_digest is None
    assert audit.action_id == uuid.UUID(out["action_id"])
    # The actor is the token's subject (the client id).
    async with engine.connect() as conn:
        actor = await conn.scalar(
            sa.text("SELECT actor FROM dead_letter_actions WHERE id = :id"),
            {"id": uuid.UUID(out["action_id"])},
        )
        clients = set((await conn.execute(sa.text("SELECT id::text FROM api_clients"))).scalars())
    assert actor == audit.actor
    assert actor in clients
    shown = (await api.get(f"/v1/dead/{dead['id']}", headers=h)).json()
    assert shown["job"]["status"] == "queued"
    assert [(x["actor"], x["queue_after"]) for x in shown["replays"]] == [(actor, "other")]
    # The ticket went out to the new queue's broker queue, like a retry's.
    ch = await broker.connection.channel()  # type: ignore[union-attr]
    q = await ch.get_queue(broker.topology.queue_name("other"), ensure=False)
    message = await wait_for(lambda: q.get(no_ack=True, fail=False))
    assert message.headers["x-jobq-job-id"] == dead["id"]
    await ch.close()
    # The other tenant's job was not touched.
    assert (await replays_of(engine, theirs["id"])) == []


async def test_the_same_idempotency_key_replays_once(
    api: Client, bearer: Bearer, engine: AsyncEngine
) -> None:
    h = await bearer("acme", EVERY)
    job = await dead_job(api, h)
    key = {**h, "Idempotency-Key": "replay-1"}
    first = await api.post("/v1/dead/replay", json={"ids": [job["id"]]}, headers=key)
    # The job runs and dies again; the same request with the same key does not replay it.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE jobs SET status = 'dead', finished_at = now() WHERE id = :id"),
            {"id": uuid.UUID(job["id"])},
        )
    again = await api.post("/v1/dead/replay", json={"ids": [job["id"]]}, headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "repeated": True}
    assert len(await replays_of(engine, job["id"])) == 1
    assert (await api.get(f"/v1/jobs/{job['id']}", headers=h)).json()["status"] == "dead"
    other = await api.post("/v1/dead/replay", json={"ids": [job["id"]], "queue": "other"},
                           headers=key)  # fmt: skip
    assert other.status_code == 422
    assert other.json()["errors"][0]["key"] == "Idempotency-Key"
    # Keys are the tenant's own: another tenant's same key is another request.
    rival = await bearer("rival", EVERY)
    theirs = await dead_job(api, rival)
    done = await api.post("/v1/dead/replay", json={"ids": [theirs["id"]]},
                          headers={**rival, "Idempotency-Key": "replay-1"})  # fmt: skip
    assert done.json()["repeated"] is False
    assert len(done.json()["replayed"]) == 1


async def test_concurrent_replays_of_one_job_replay_it_once(
    settings: Settings, bearer: Bearer, engine: AsyncEngine, clean: None
) -> None:
    h = await bearer("acme", EVERY)
    async with listening(settings) as http:
        jobs = [await dead_job(http, h) for _ in range(3)]
        body = {"ids": [j["id"] for j in jobs]}
        plain = await asyncio.gather(*(http.post("/v1/dead/replay", json=body, headers=h)
                                       for _ in range(4)))  # fmt: skip
        for j in jobs:  # dead again, for the same request under one key, four times at once
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("UPDATE jobs SET status = 'dead', finished_at = now() WHERE id = :id"),
                    {"id": uuid.UUID(j["id"])},
                )
        keyed = {**h, "Idempotency-Key": "once"}
        same_key = await asyncio.gather(*(http.post("/v1/dead/replay", json=body, headers=keyed)
                                          for _ in range(4)))  # fmt: skip
    assert all(r.status_code == 200 for r in (*plain, *same_key)), [r.text for r in plain]
    replayed = sorted(r["id"] for p in plain for r in p.json()["replayed"])
    assert replayed == sorted(body["ids"])  # each once, whichever request won it
    assert sorted(s["reason"] for p in plain for s in p.json()["skipped"]) == ["not_dead"] * 9
    results = [r.json() for r in same_key]
    assert sum(not r["repeated"] for r in results) == 1
    assert {r["action_id"] for r in results} == {results[0]["action_id"]}
    assert all(len(r["replayed"]) == 3 for r in results)
    for j in jobs:
        assert len(await replays_of(engine, j["id"])) == 2  # one per round


async def test_bad_replays_are_refused_and_change_nothing(api: Client, bearer: Bearer) -> None:
    h = await bearer("acme", EVERY)
    a, b = await dead_job(api, h), await dead_job(api, h)
    for body, status in [
        ({"ids": [a["id"]], "queue": "nowhere"}, 422),  # an undeclared queue
        ({"ids": [a["id"], b["id"]], "payload": {"x": 1}}, 422),  # a payload for two jobs
        ({"filter": {}, "payload": {"x": 1}}, 422),
        ({"ids": [a["id"]], "filter": {}}, 422),  # both
        ({}, 422),  # neither
        ({"ids": [a["id"], a["id"]]}, 422),
        ({"ids": []}, 422),
        ({"ids": [str(uuid.uuid4()) for _ in range(1001)]}, 422),
        ({"filter": {}, "limit": 1001}, 422),
        ({"ids": [a["id"]], "payload": "x" * (300 * 1024)}, 413),
        ({"ids": [a["id"]], "payload": {"s": "\u0000"}}, 422),
        ({"ids": [a["id"]], "surprise": 1}, 422),
        ({"filter": {"since": "2030-01-01T00:00:00"}}, 422),  # no offset
    ]:
        r = await api.post("/v1/dead/replay", json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    listed = ids((await api.get("/v1/dead", headers=h)).json())
    assert sorted(listed) == sorted([a["id"], b["id"]])


async def test_a_job_whose_queue_was_deleted_is_replayed_into_another(
    api: Client, bearer: Bearer
) -> None:
    h = await bearer("acme", EVERY)
    admin = await bearer("acme", ADMIN)
    assert (await api.post("/v1/admin/queues", json={"name": "going"}, headers=admin)).is_success
    job = await dead_job(api, h, queue="going")
    assert (await api.delete("/v1/admin/queues/going", headers=admin)).status_code == 204
    kept = await api.post("/v1/dead/replay", json={"ids": [job["id"]]}, headers=h)
    assert kept.json()["skipped"] == [
        {"id": job["id"], "reason": "queue_undeclared", "status": None}
    ]
    moved = await api.post(
        "/v1/dead/replay", json={"ids": [job["id"]], "queue": "default"}, headers=h
    )
    assert [r["queue_after"] for r in moved.json()["replayed"]] == ["default"]


async def test_a_filter_replays_the_last_deaths_up_to_the_limit(
    api: Client, bearer: Bearer
) -> None:
    h = await bearer("acme", EVERY)
    timeouts = [await dead_job(api, h, error="Timeout") for _ in range(3)]
    refused = await dead_job(api, h, error="SmtpRefused")
    r = await api.post(
        "/v1/dead/replay", json={"filter": {"error": "Timeout"}, "limit": 2}, headers=h
    )
    assert sorted(x["id"] for x in r.json()["replayed"]) == sorted(j["id"] for j in timeouts[1:])
    left = ids((await api.get("/v1/dead", headers=h)).json())
    assert sorted(left) == sorted([timeouts[0]["id"], refused["id"]])


async def test_purge_counts_by_default_and_deletes_only_what_it_matches(
    api: Client, bearer: Bearer, engine: AsyncEngine, store: JobStore
) -> None:
    h = await bearer("acme", EVERY)
    doomed = [await dead_job(api, h, queue="other") for _ in range(3)]
    kept = await dead_job(api, h, queue="default")
    replayed = await dead_job(api, h, queue="other")
    await api.post("/v1/dead/replay", json={"ids": [replayed["id"]]}, headers=h)
    theirs = await dead_job(api, await bearer("rival", EVERY), queue="other")

    dry = await api.post("/v1/dead/purge", json={"filter": {"queue": "other"}}, headers=h)
    assert dry.json() == {"dry_run": True, "matched": 3, "deleted": 0, "action_id": None}
    assert len(ids((await api.get("/v1/dead", headers=h)).json())) == 4

    real = await api.post(
        "/v1/dead/purge", json={"filter": {"queue": "other"}, "dry_run": False}, headers=h
    )
    out = real.json()
    assert (out["dry_run"], out["matched"], out["deleted"]) == (False, 3, 3)
    for j in doomed:
        assert await store.get("acme", uuid.UUID(j["id"])) is None
    assert ids((await api.get("/v1/dead", headers=h)).json()) == [kept["id"]]
    assert await store.get("acme", uuid.UUID(replayed["id"])) is not None  # not dead now
    assert await store.get("rival", uuid.UUID(theirs["id"])) is not None
    async with engine.connect() as conn:
        audit = (
            await conn.execute(
                sa.text("SELECT action, tenant, request, result FROM dead_letter_actions"
                        " WHERE id = :id"),
                {"id": uuid.UUID(out["action_id"])},
            )
        ).one()  # fmt: skip
    assert (audit.action, audit.tenant, audit.result) == ("purge", "acme", {"deleted": 3})
    assert audit.request["filter"] == {"queue": "other"}
    again = await api.post("/v1/dead/purge", json={"dry_run": False}, headers=h)
    assert again.json()["deleted"] == 1


async def test_a_replayed_job_with_a_fixed_payload_runs_to_success_on_a_real_worker(
    api: Client,
    bearer: Bearer,
    start_worker: StartWorker,
    scheduler: Scheduler,
    engine: AsyncEngine,
) -> None:
    """The ``sleep`` handler refuses a payload with an unknown field for good (dead at the
    first attempt); replayed with one it takes, into another queue, the job succeeds."""
    await start_worker(worker_queues="default,other")
    h = await bearer("acme", EVERY)
    async with ticking(scheduler):
        job = (
            await api.post("/v1/jobs", json={"type": "sleep", "payload": {"secs": 0}}, headers=h)
        ).json()

        async def status() -> str:
            return str((await api.get(f"/v1/jobs/{job['id']}", headers=h)).json()["status"])

        await wait_for(lambda: _is(status(), JobStatus.DEAD))
        letter = (await api.get("/v1/dead", headers=h)).json()["items"][0]
        assert letter["id"] == job["id"]
        assert letter["attempts"] == 1
        error_class = letter["last_error"]["type"]
        page = await api.get("/v1/dead", params={"error": error_class}, headers=h)
        assert ids(page.json()) == [job["id"]]
        r = await api.post(
            "/v1/dead/replay",
            json={"ids": [job["id"]], "payload": {"seconds": 0}, "queue": "other"},
            headers=h,
        )
        assert r.json()["replayed"][0]["payload_replaced"] is True
        await wait_for(lambda: _is(status(), JobStatus.SUCCEEDED))
    done = (await api.get(f"/v1/jobs/{job['id']}", headers=h)).json()
    assert (done["queue"], done["payload"], done["result"]) == ("other", {"seconds": 0},
                                                                {"slept": 0})  # fmt: skip
    [audit] = await replays_of(engine, job["id"])
    assert audit.payload_replaced
    assert audit.payload_digest
    assert len(audit.payload_digest) == 64


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)
