"""Every setting jobq reads, in one typed object built once at the edge of each process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

from shared.errors import ConfigError

QueueType = Literal["quorum", "classic"]


@dataclass(frozen=True, slots=True)
class Settings:
    """jobq configuration; each field ``name`` is read from ``JOBQ_<NAME>``."""

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/jobq"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: RabbitMQ management API, for unacked counts in GET /v1/queues (optional).
    management_url: str = "http://guest:guest@127.0.0.1:15672"
    #: Prefix for every exchange and queue name; tests use it to isolate runs on one vhost.
    broker_prefix: str = "jobq"
    queue_type: QueueType = "quorum"
    #: Poison backstop on quorum queues: deliveries of one ticket before it is dead-lettered.
    delivery_limit: int = 10

    jwt_secret: str = ""
    jwt_secret_file: str = ""
    jwt_issuer: str = "jobq"
    jwt_audience: str = "jobq"
    jwt_ttl_seconds: int = 900
    jwt_leeway_seconds: int = 30

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    max_payload_bytes: int = 256 * 1024
    max_request_bytes: int = 16 * 1024 * 1024
    max_batch_jobs: int = 1000
    max_list_limit: int = 500

    lease_seconds: float = 30.0
    #: Queued jobs whose publish was not confirmed this long ago are published again.
    republish_after_seconds: float = 30.0
    #: Confirmed tickets of jobs still queued this long ago, on an empty broker queue, are presumed lost.
    lost_ticket_after_seconds: float = 120.0
    #: A ticket waiting in a worker's buffer this long (all slots busy) is handed back to the queue,
    #: so no delivery stays unacknowledged near RabbitMQ's consumer_timeout.
    handback_after_seconds: float = 300.0
    shutdown_grace_seconds: float = 30.0
    scheduler_interval_seconds: float = 1.0
    scheduler_batch_size: int = 500
    publish_timeout_seconds: float = 10.0
    db_timeout_seconds: float = 10.0
    db_pool_size: int = 10

    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 600.0

    worker_queues: str = "default"
    worker_concurrency: int = 32
    #: Comma-separated modules whose ``@handler`` functions the worker registers.
    handlers: str = ""

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from ``JOBQ_*`` variables; a malformed value is a ``ConfigError``."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"JOBQ_{f.name.upper()}")
            if raw is None:
                continue
            kind = hints[f.name]
            try:
                values[f.name] = kind(raw) if kind in (int, float) else raw
            except ValueError:
                raise ConfigError(
                    f"JOBQ_{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.queue_type not in ("quorum", "classic"):
            raise ConfigError(f"JOBQ_QUEUE_TYPE must be quorum or classic, not {self.queue_type!r}")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"JOBQ_LOG_FORMAT must be json or text, not {self.log_format!r}")
        if self.lease_seconds <= 0 or self.worker_concurrency < 1:
            raise ConfigError("JOBQ_LEASE_SECONDS and JOBQ_WORKER_CONCURRENCY must be positive")

    def signing_secret(self) -> str:
        """The JWT signing secret, from ``JOBQ_JWT_SECRET`` or the file ``JOBQ_JWT_SECRET_FILE``."""
        secret = self.jwt_secret
        if not secret and self.jwt_secret_file:
            try:
                secret = Path(self.jwt_secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read JOBQ_JWT_SECRET_FILE: {exc}") from None
        if len(secret) < 32:
            raise ConfigError(
                "set JOBQ_JWT_SECRET (or JOBQ_JWT_SECRET_FILE) to at least 32 random characters, "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return secret

    @property
    def queues(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def handler_modules(self) -> list[str]:
        return [m.strip() for m in self.handlers.split(",") if m.strip()]

    @property
    def sync_database_url(self) -> str:
        """The database URL as libpq/asyncpg spells it (no SQLAlchemy driver suffix)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
