"""Hostile values for every query parameter and every instant the API takes, on real PostgreSQL
and RabbitMQ: a 500 from input is a bug.

The parameters come from the served OpenAPI document, so a new one is fuzzed without a new
test. Instants are generated at the edges of what RFC 3339 allows (years 0001 and 9999,
offsets of ±23:59), where they fall outside what ``datetime`` holds in UTC.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from services.api.app import create_app
from shared.config import Settings
from tests.conftest import Bearer

pytestmark = pytest.mark.integration
ALL_SCOPES = ["admin", "jobs:read", "jobs:work", "jobs:write"]


def rfc3339(year: int, month: int, day: int, clock: str, offset: int | None) -> str:
    if offset is None:
        zone = ""
    elif offset == 0:
        zone = "Z"
    else:
        sign = "+" if offset > 0 else "-"
        zone = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return f"{year:04d}-{month:02d}-{day:02d}T{clock}{zone}"


YEARS = st.sampled_from([1, 2, 1969, 1970, 2030, 9998, 9999]) | st.integers(1, 9999)
OFFSETS = st.none() | st.sampled_from([0, 1439, -1439, 1, -1]) | st.integers(-1439, 1439)
CLOCKS = st.sampled_from(["00:00:00", "23:59:59", "23:59:59.999999", "12:30:00.5"])
INSTANTS = st.builds(rfc3339, YEARS, st.integers(1, 12), st.integers(1, 28), CLOCKS, OFFSETS)
SPECIAL = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "nan", "NaN", "inf", "-inf", "1e999", "-0", "0x1f", "9" * 400,
     "\u202e", "\ufeff", "%00", "null", "[]", "{}", "default\x00", "../etc/passwd"]
)  # fmt: skip
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
NUMBERS = st.integers().map(str) | st.floats().map(repr)
VALUES = st.one_of(SPECIAL, TEXT, NUMBERS, INSTANTS)


def expected_instant(text: str, naive_is_utc: bool = False) -> bool:
    """Whether the API should take ``text`` as an instant: ISO 8601 with an offset (or, in a
    query string, without one, meaning UTC), from 1970 on in UTC."""
    try:
        instant = datetime.fromisoformat(text)
        if naive_is_utc and instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        utc = instant.astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return instant.tzinfo is not None and datetime(1970, 1, 1, tzinfo=UTC) <= utc


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Litestar]]:
    with TestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture
async def headers(bearer: Bearer) -> dict[str, str]:
    return await bearer(scopes=ALL_SCOPES)


def query_operations(client: TestClient[Litestar]) -> list[tuple[str, str, list[str]]]:
    """``(method, path with ids filled in, query parameter names)`` of every operation."""
    document = client.get("/schema/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            query = [p["name"] for p in params if p["in"] == "query"]
            if query:
                filled = path
                for p in params:
                    if p["in"] == "path":
                        filled = filled.replace("{" + p["name"] + "}", str(uuid.uuid4()))
                found.append((method.upper(), filled, query))
    return found


def test_no_query_parameter_value_answers_a_server_error(
    client: TestClient[Litestar], headers: dict[str, str]
) -> None:
    operations = query_operations(client)
    assert {p for _, path, names in operations for p in names if path == "/v1/jobs"} >= {
        "type", "queue", "status", "created_after", "created_before", "cursor", "limit"
    }  # fmt: skip

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        method, path, names = data.draw(st.sampled_from(operations))
        params = data.draw(st.dictionaries(st.sampled_from(names), VALUES, min_size=1))
        r = client.request(method, path, params=params, headers=headers)
        assert r.status_code < 500, (method, path, params, r.text)
        if r.status_code == 422:
            assert r.headers["content-type"].startswith("application/problem+json")

    check()


@pytest.mark.parametrize("name", ["created_after", "created_before"])
def test_query_instants_are_bounded_after_their_offset(
    client: TestClient[Litestar], headers: dict[str, str], name: str
) -> None:
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(INSTANTS)
    def check(instant: str) -> None:
        r = client.get("/v1/jobs", params={name: instant}, headers=headers)
        assert r.status_code in (200, 422), r.text
        assert (r.status_code == 200) == expected_instant(instant, naive_is_utc=True), instant

    check()


def test_body_instants_are_bounded_after_their_offset(
    client: TestClient[Litestar], headers: dict[str, str]
) -> None:
    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(INSTANTS)
    def check(instant: str) -> None:
        job = client.post("/v1/jobs", json={"type": "noop", "run_at": instant}, headers=headers)
        batch = client.post(
            "/v1/jobs/batch", json={"jobs": [{"type": "noop", "run_at": instant}]}, headers=headers
        )
        created = client.post(
            "/v1/admin/clients",
            json={"name": "f", "tenant": "acme", "scopes": ["jobs:read"], "expires_at": instant},
            headers=headers,
        )
        accepted = expected_instant(instant)
        assert job.status_code == (202 if accepted else 422), (instant, job.text)
        assert batch.status_code == (202 if accepted else 422), (instant, batch.text)
        future = accepted and datetime.fromisoformat(instant) > datetime.now(UTC)
        assert created.status_code == (201 if future else 422), (instant, created.text)

    check()


def test_bodies_with_out_of_range_instants_name_the_field(
    client: TestClient[Litestar], headers: dict[str, str]
) -> None:
    body: dict[str, Any] = {
        "jobs": [{"type": "noop"}, {"type": "noop", "run_at": "0001-01-01T00:00:00+23:59"}]
    }
    r = client.post("/v1/jobs/batch", json=body, headers=headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["key"] == "jobs[1].run_at"
