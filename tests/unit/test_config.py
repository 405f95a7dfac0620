"""Settings come from JOBQ_* variables; bad values fail with one clear message."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError


def test_defaults_point_at_local_services() -> None:
    s = Settings.from_env({})
    assert s.database_url.startswith("postgresql+asyncpg://")
    assert "127.0.0.1:5432" in s.database_url
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert (s.queue_type, s.lease_seconds, s.max_payload_bytes) == ("quorum", 30.0, 256 * 1024)


def test_variables_are_parsed_to_their_types() -> None:
    s = Settings.from_env(
        {"JOBQ_LEASE_SECONDS": "2.5", "JOBQ_WORKER_CONCURRENCY": "4", "JOBQ_WORKER_QUEUES": "a, b"}
    )
    assert (s.lease_seconds, s.worker_concurrency, s.consumed_queues) == (2.5, 4, ["a", "b"])


@pytest.mark.parametrize(
    "env",
    [
        {"JOBQ_LEASE_SECONDS": "soon"},
        {"JOBQ_QUEUE_TYPE": "stream"},
        {"JOBQ_WORKER_CONCURRENCY": "0"},
        {"JOBQ_JWT_ALGORITHM": "none"},
        {"JOBQ_SUBMIT_RATE_PER_SECOND": "nan"},
        {"JOBQ_SUBMIT_RATE_PER_SECOND": "-1"},
        {"JOBQ_MAX_WAITERS": "0"},
        {"JOBQ_MAX_BATCH_JOBS": "0"},
        {"JOBQ_JWT_TTL_SECONDS": "-5"},
        {"JOBQ_JWT_LEEWAY_SECONDS": "-1"},
        {"JOBQ_MAX_LIST_LIMIT": "501"},
        {"JOBQ_SUBMIT_BURST": "10"},
        {"JOBQ_TOKEN_CLIENT_FAILURES_PER_MINUTE": "-1"},
        {"JOBQ_TOKEN_ADDRESS_FAILURES_PER_MINUTE": "-1"},
        {"JOBQ_HTTP_IDLE_TIMEOUT_SECONDS": "nan"},
        {"JOBQ_HTTP_HEADER_TIMEOUT_SECONDS": "0"},
        {"JOBQ_HTTP_BODY_TIMEOUT_SECONDS": "inf"},
        {"JOBQ_HTTP_MAX_HEADER_BYTES": "-1"},
        {"JOBQ_OIDC_ISSUER": "https://idp.example"},
        {
            "JOBQ_OIDC_ISSUER": "jobq",
            "JOBQ_OIDC_JWKS_URL": "https://x/jwks",
            "JOBQ_OIDC_AUDIENCE": "a",
        },
        {
            "JOBQ_OIDC_ISSUER": "https://i",
            "JOBQ_OIDC_JWKS_URL": "https://x/jwks",
            "JOBQ_OIDC_AUDIENCE": "a",
            "JOBQ_OIDC_ALGORITHMS": "RS256,HS256",
        },
    ],
)
def test_bad_values_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_the_signing_secret_comes_from_the_environment_or_a_file(
    tmp_path: pytest.TempPathFactory,
) -> None:
    with pytest.raises(ConfigError, match="JOBQ_JWT_SECRET"):
        Settings().signing_secret()
    path = tmp_path / "secret"  # type: ignore[operator]
    path.write_text("k" * 40 + "\n")
    assert Settings(jwt_secret_file=str(path)).signing_secret() == "k" * 40
