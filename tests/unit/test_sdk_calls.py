"""The SDK's rules without a server: credentials, token renewal, retries, problem+json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jobq
import pytest
from jobq import calls
from jobq.errors import error_from
from jobq.models import Token


def test_credentials_from_a_file_like_jobq_init_writes(tmp_path: Path) -> None:
    path = tmp_path / "admin.json"
    path.write_text(json.dumps({"client_id": "c", "client_secret": "s", "tenant": "default"}))
    assert calls.Credentials.from_file(path, url="http://x") == calls.Credentials(
        "http://x", "c", "s"
    )
    with pytest.raises(jobq.JobqError, match="JOBQ_URL"):
        calls.Credentials.from_file(path, url=None)


def test_credentials_from_the_environment_name_what_is_missing() -> None:
    env = {"JOBQ_URL": "http://x", "JOBQ_CLIENT_ID": "c"}
    with pytest.raises(jobq.JobqError, match="JOBQ_CLIENT_SECRET"):
        calls.Credentials.from_env(env)
    assert calls.Credentials.from_env({**env, "JOBQ_CLIENT_SECRET": "s"}).client_secret == "s"
    assert "hunter2" not in repr(calls.Credentials("u", "c", "hunter2"))


def test_a_token_is_renewed_a_margin_before_it_expires() -> None:
    cache = calls.TokenCache()
    assert cache.fresh(0) is None
    cache.store(Token("t", expires_in=900), now=100)
    assert cache.fresh(100 + 900 - 61) == "t"
    assert cache.fresh(100 + 900 - 60) is None  # a tenth of its life, at most 60 s early
    cache.store(Token("short", expires_in=20), now=0)
    assert cache.fresh(14.9) == "short"
    assert cache.fresh(15) is None  # at least 5 s early


def test_retries_wait_what_retry_after_says_else_back_off() -> None:
    policy = calls.RetryPolicy(attempts=5, base_delay=1, max_delay=10)
    assert policy.delay(1, 3) == 3
    assert policy.delay(1, 100) == 10
    assert 0.5 <= policy.delay(1, None) <= 1
    assert 4 <= policy.delay(4, None) <= 8
    assert policy.delay(9, None) <= 10


def test_problems_become_the_matching_exception() -> None:
    body = json.dumps(
        {"status": 422, "title": "Unprocessable", "detail": "bad",
         "errors": [{"key": "queue", "message": "x"}]}
    ).encode()  # fmt: skip
    invalid = error_from(422, body, None)
    assert isinstance(invalid, jobq.InvalidJob)
    assert (invalid.field, invalid.detail) == ("queue", "bad")
    limited = error_from(429, b'{"detail": "slow down"}', "7")
    assert isinstance(limited, jobq.RateLimited)
    assert limited.retry_after == 7
    assert isinstance(error_from(503, b"", None), jobq.Unavailable)
    assert isinstance(error_from(409, b"{}", None), jobq.Conflict)
    assert isinstance(error_from(500, b"<html>", None), jobq.ServerError)
    assert str(error_from(502, b"", None)) == "HTTP 502"


def test_a_503_is_sent_again_after_retry_after_and_a_cancel_is_not_resent_blind() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/jobs" and seen.count("/v1/jobs") == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "down"})
        if request.url.path.endswith("/cancel"):
            raise httpx.ReadTimeout("sent, no answer", request=request)
        return httpx.Response(202, json=JOB)

    client = jobq.Client(url="http://api", token="t")
    client._http = httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer))
    assert client.submit("noop").type == "noop"
    assert seen == ["/v1/jobs", "/v1/jobs"]
    with pytest.raises(jobq.Unavailable):
        client.cancel(JOB["id"])
    assert seen.count(f"/v1/jobs/{JOB['id']}/cancel") == 1  # it may have been done: not again


JOB: dict[str, Any] = {
    "id": "0190f7c4-6b1e-7c3a-9d2e-6f1a2b3c4d5e", "type": "noop", "queue": "default",
    "status": "queued", "payload": None, "priority": 5, "attempts": 0, "max_attempts": 3,
    "timeout_seconds": 300, "run_at": "2026-11-30T12:00:00Z",
    "created_at": "2026-11-30T12:00:00Z", "updated_at": "2026-11-30T12:00:00Z",
}  # fmt: skip


def test_any_other_call_decodes_its_json_and_is_resent_only_if_a_read() -> None:
    read = calls.api("GET", "/v1/schedules", params={"limit": "5"})
    assert (read.method, read.path, read.params, read.resend) == (
        "GET", "/v1/schedules", {"limit": "5"}, "always",
    )  # fmt: skip
    assert read.decode(b'{"items": [], "next_cursor": null}') == {"items": [], "next_cursor": None}
    change = calls.api("PATCH", "/v1/schedules/x", {"paused": True})
    assert (change.json, change.resend) == ({"paused": True}, "unsent")
    assert calls.api("DELETE", "/v1/schedules/x").decode(b"") is None  # 204: no body
