"""Every setting jobq reads, in one typed object built once at the edge of each process."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints
from urllib.parse import urlsplit

from shared.errors import ConfigError

QueueType = Literal["quorum", "classic"]
#: What a queue's (and a job type's) name looks like.
NAME_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"
QUEUE_NAME = re.compile(NAME_PATTERN)
#: The most jobs one list page can hold (docs/design.md §5); ``JOBQ_MAX_LIST_LIMIT`` may lower it.
MAX_LIST_LIMIT = 500
#: Asymmetric algorithms an external issuer may sign with (never HS*, never none).
OIDC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)


def csv_list(value: str) -> list[str]:
    """The items of a comma-separated setting, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


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
    #: The most messages ``jobq.dead`` keeps (0: no bound); past it the oldest are dropped
    #: (PostgreSQL keeps every dead job). Changing it recreates the queue: ``jobq broker
    #: redeclare --dead-letters``.
    dead_letter_max_length: int = 0

    jwt_secret: str = ""
    jwt_secret_file: str = ""
    jwt_issuer: str = "jobq"
    jwt_audience: str = "jobq"
    jwt_ttl_seconds: int = 900
    jwt_leeway_seconds: int = 30
    #: HS256 signs with the shared secret; EdDSA or RS256 with ``jwt_private_key_file`` (PEM),
    #: whose public key is served at ``/.well-known/jwks.json``.
    jwt_algorithm: Literal["HS256", "EdDSA", "RS256"] = "HS256"
    jwt_private_key_file: str = ""
    #: Keys accepted but not used to sign (comma-separated): rotation without downtime.
    jwt_extra_secrets: str = ""
    jwt_extra_public_key_files: str = ""
    #: An organisation's OpenID Connect issuer whose tokens are accepted too (empty: none).
    oidc_issuer: str = ""
    oidc_jwks_url: str = ""
    oidc_audience: str = ""
    oidc_algorithms: str = "RS256,ES256,EdDSA"
    #: The IdP token claims that name the jobq tenant and scopes (a string or a list).
    oidc_tenant_claim: str = "tenant"
    oidc_scope_claim: str = "scope"

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: API processes sharing the port (``jobq api``, ``jobq up``); each has its own pools,
    #: submit path and limits (docs/design.md §7 on sizing them).
    api_processes: int = 1
    #: A connection with no request in progress is closed after this long (a response the client
    #: has not read by then is dropped). Longer than common clients' idle expiry (httpx: 5 s), so
    #: a client never sends on a connection the server is closing.
    http_idle_timeout_seconds: float = 30.0
    #: A request line and headers must arrive within this long of their first byte (``408``).
    http_header_timeout_seconds: float = 10.0
    #: A request body must arrive within this long of its headers (``408``).
    http_body_timeout_seconds: float = 60.0
    #: The most bytes a request line and headers may take (``431``); Node's and h11's limit.
    http_max_header_bytes: int = 16 * 1024
    max_payload_bytes: int = 256 * 1024
    max_request_bytes: int = 16 * 1024 * 1024
    max_batch_jobs: int = 1000
    max_list_limit: int = 500
    #: A list page ends early (with a cursor) once its jobs' JSON passes this; one job per
    #: page at least.
    max_page_bytes: int = 4 * 1024 * 1024
    #: Jobs per second one client may submit, per API process (a token bucket; 0: no limit).
    submit_rate_per_second: float = 500.0
    #: Jobs one client may submit at once beyond the rate; at least ``max_batch_jobs``.
    submit_burst: int = 2000
    #: The same for all the clients of one tenant together.
    submit_rate_per_tenant: float = 1000.0
    submit_burst_per_tenant: int = 4000
    #: Single submits arriving while earlier ones are being written are gathered into one
    #: INSERT and one publish (docs/design.md §7): at most this many a statement, ...
    submit_gather_max: int = 500
    #: ... with at most this many statements under way at once, per API process.
    submit_statements: int = 3
    #: Submits one API process answers at once; past them, another is refused at once with
    #: ``503`` and ``Retry-After`` (load shedding, ``services/api/shedding.py``; 0: no bound).
    submit_max_in_flight: int = 128
    #: Long-polls (``GET /v1/jobs/{id}/wait``) one API process holds open at once, for one
    #: tenant's clients together, and for one client.
    max_waiters: int = 200
    max_waiters_per_tenant: int = 100
    max_waiters_per_client: int = 50
    #: Failed ``POST /v1/auth/token`` attempts per minute, per API process, for one client id
    #: and from one source address (0: no limit); beyond them, ``429`` until the budget refills.
    token_client_failures_per_minute: int = 10
    token_address_failures_per_minute: int = 30

    lease_seconds: float = 30.0
    #: HTTP workers waiting for a lease: how often one API process asks for all of them.
    lease_poll_seconds: float = 0.25
    #: Submits must name a job type a worker serves, with a payload its schema accepts; the
    #: type's defaults fill what the submitter left out.
    strict_types: bool = False
    #: How long a type stays served after its last worker was seen (rolling deploys).
    types_grace_seconds: float = 600.0
    #: The longest an HTTP worker's lease request waits for a job (it may ask for less).
    lease_max_wait_seconds: float = 30.0
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
    #: Fair dispatch (docs/design.md §2.2): a queue with this many tickets outstanding (sent to
    #: RabbitMQ, not yet claimed) holds new jobs in PostgreSQL, and the dispatcher releases
    #: them tenant by tenant as workers take tickets (0: never; tickets go out at once).
    fair_depth: int = 1000
    #: How often the dispatcher looks for held jobs to release (sooner while it has work).
    dispatch_interval_seconds: float = 0.2
    #: A cron tick found due less than this late fires whatever the schedule's catch-up bound
    #: (the scheduler was busy); later, it was missed (no scheduler ran) and the bound applies.
    schedule_grace_seconds: float = 30.0
    #: Cron schedules one tenant may have: each tick's job bypasses the submit rate limits.
    max_schedules_per_tenant: int = 1000
    publish_timeout_seconds: float = 10.0
    db_timeout_seconds: float = 10.0
    db_pool_size: int = 10

    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 600.0

    #: Finished jobs are deleted this long after they finished (0: kept forever), unless their
    #: queue says otherwise (``/v1/admin/queues``); an idempotency key lives as long as its job.
    retention_succeeded_seconds: float = 7 * 86400.0
    retention_dead_seconds: float = 30 * 86400.0
    retention_canceled_seconds: float = 30 * 86400.0
    #: Jobs one DELETE takes (each statement locks only those rows, briefly).
    retention_batch_size: int = 1000
    #: How often the scheduler looks for jobs past their retention.
    retention_interval_seconds: float = 60.0

    #: Queues declared at every service's start (comma-separated), besides ``default``, which
    #: always exists; admins declare more with ``POST /v1/admin/queues``. Jobs may name only
    #: declared queues.
    queues: str = ""
    worker_queues: str = "default"
    worker_concurrency: int = 32
    #: Comma-separated modules whose ``@handler`` functions the worker registers.
    handlers: str = ""
    #: Host names and CIDRs the ``webhook`` handler may reach although they are not public
    #: (comma-separated, e.g. ``hooks.internal,10.1.0.0/16``); other non-public ones are refused.
    webhook_allow: str = ""
    #: One ``webhook`` attempt's whole budget: DNS, connects, redirects, reading the response.
    webhook_timeout_seconds: float = 10.0
    #: A ``webhook`` response larger than this fails its job (it is not truncated).
    webhook_max_response_bytes: int = 256 * 1024
    #: Redirects a ``webhook`` follows, each destination checked again.
    webhook_max_redirects: int = 5

    #: Result callbacks (docs/design.md §10), POSTed by the scheduler to the public addresses
    #: ``JOBQ_WEBHOOK_ALLOW`` allows, as for the ``webhook`` handler. One attempt's whole
    #: budget: DNS, connect, the answer.
    callback_timeout_seconds: float = 10.0
    #: Attempts per finished job before it is given up (each one recorded).
    callback_max_attempts: int = 8
    #: Backoff between attempts: full jitter over ``base * 2**(attempt-1)``, at most the cap.
    callback_backoff_seconds: float = 5.0
    callback_backoff_max_seconds: float = 3600.0
    #: Deliveries one scheduler has in flight at once.
    callback_concurrency: int = 16
    #: After a client's callback secret is rotated, the previous one signs too for this long.
    callback_secret_grace_seconds: float = 86400.0

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    #: Count jobs and time them for ``/metrics``; off, the services count nothing (``make
    #: bench`` measures what that saves) and ``/metrics`` shows only the scrape-time gauges.
    metrics: bool = True
    #: Where the worker and the scheduler serve ``/metrics`` (Prometheus text), ``/health``
    #: (liveness: their loops make progress) and ``/health/ready``; the API serves them on its
    #: own port. Port ``0`` turns a service's off. ``jobq up`` gives each worker a port of its own.
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9101
    scheduler_metrics_port: int = 9100
    #: ``/health`` fails once a service's loop has made no progress for this long.
    liveness_deadline_seconds: float = 60.0

    #: The dashboard's link from a job to its trace (docs/operations.md §6): ``{trace_id}`` is
    #: replaced by the job's, e.g. ``http://127.0.0.1:16686/trace/{trace_id}`` for Jaeger's
    #: UI; empty: the dashboard shows the trace id without a link.
    ui_trace_url: str = ""

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
                values[f.name] = (
                    _flag(raw) if kind is bool else kind(raw) if kind in (int, float) else raw
                )
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
        if self.jwt_algorithm not in ("HS256", "EdDSA", "RS256"):
            raise ConfigError(
                f"JOBQ_JWT_ALGORITHM must be HS256, EdDSA or RS256, not {self.jwt_algorithm!r}"
            )
        for queue in {*self.declared_queues, *self.consumed_queues}:
            if not QUEUE_NAME.fullmatch(queue):
                raise ConfigError(f"queue name {queue!r} must match {QUEUE_NAME.pattern}")
        if not 1 <= self.max_list_limit <= MAX_LIST_LIMIT:
            raise ConfigError(f"JOBQ_MAX_LIST_LIMIT must be between 1 and {MAX_LIST_LIMIT}")
        positive = {
            "JOBQ_JWT_TTL_SECONDS": self.jwt_ttl_seconds,
            "JOBQ_MAX_BATCH_JOBS": self.max_batch_jobs,
            "JOBQ_MAX_PAYLOAD_BYTES": self.max_payload_bytes,
            "JOBQ_MAX_REQUEST_BYTES": self.max_request_bytes,
            "JOBQ_MAX_PAGE_BYTES": self.max_page_bytes,
            "JOBQ_MAX_WAITERS": self.max_waiters,
            "JOBQ_API_PROCESSES": self.api_processes,
            "JOBQ_SUBMIT_GATHER_MAX": self.submit_gather_max,
            "JOBQ_SUBMIT_STATEMENTS": self.submit_statements,
            "JOBQ_MAX_WAITERS_PER_TENANT": self.max_waiters_per_tenant,
            "JOBQ_MAX_WAITERS_PER_CLIENT": self.max_waiters_per_client,
            "JOBQ_HTTP_IDLE_TIMEOUT_SECONDS": self.http_idle_timeout_seconds,
            "JOBQ_HTTP_HEADER_TIMEOUT_SECONDS": self.http_header_timeout_seconds,
            "JOBQ_HTTP_BODY_TIMEOUT_SECONDS": self.http_body_timeout_seconds,
            "JOBQ_HTTP_MAX_HEADER_BYTES": self.http_max_header_bytes,
            "JOBQ_LIVENESS_DEADLINE_SECONDS": self.liveness_deadline_seconds,
            "JOBQ_RETENTION_BATCH_SIZE": self.retention_batch_size,
            "JOBQ_RETENTION_INTERVAL_SECONDS": self.retention_interval_seconds,
            "JOBQ_DISPATCH_INTERVAL_SECONDS": self.dispatch_interval_seconds,
            "JOBQ_SCHEDULE_GRACE_SECONDS": self.schedule_grace_seconds,
            "JOBQ_MAX_SCHEDULES_PER_TENANT": self.max_schedules_per_tenant,
            "JOBQ_CALLBACK_TIMEOUT_SECONDS": self.callback_timeout_seconds,
            "JOBQ_CALLBACK_MAX_ATTEMPTS": self.callback_max_attempts,
            "JOBQ_CALLBACK_BACKOFF_SECONDS": self.callback_backoff_seconds,
            "JOBQ_CALLBACK_BACKOFF_MAX_SECONDS": self.callback_backoff_max_seconds,
            "JOBQ_CALLBACK_CONCURRENCY": self.callback_concurrency,
        }
        for name, value in positive.items():
            if not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number, not {value}")
        for status in ("succeeded", "dead", "canceled"):
            if not 0 <= getattr(self, f"retention_{status}_seconds") < float("inf"):
                raise ConfigError(f"JOBQ_RETENTION_{status.upper()}_SECONDS must be >= 0 (0: keep)")
        if self.fair_depth < 0:
            raise ConfigError("JOBQ_FAIR_DEPTH must be >= 0 (0: fair dispatch off)")
        if not 0 <= self.callback_secret_grace_seconds < float("inf"):
            raise ConfigError("JOBQ_CALLBACK_SECRET_GRACE_SECONDS must be >= 0 (0: none)")
        if not 0 <= self.jwt_leeway_seconds <= 300:
            raise ConfigError("JOBQ_JWT_LEEWAY_SECONDS must be between 0 and 300")
        for rate, burst, suffix in (
            (self.submit_rate_per_second, self.submit_burst, "RATE_PER_SECOND"),
            (self.submit_rate_per_tenant, self.submit_burst_per_tenant, "RATE_PER_TENANT"),
        ):
            if not 0 <= rate < float("inf"):
                raise ConfigError(f"JOBQ_SUBMIT_{suffix} must be a number >= 0 (0: no limit)")
            if rate > 0 and burst < self.max_batch_jobs:
                raise ConfigError(
                    f"the burst of JOBQ_SUBMIT_{suffix} must be at least JOBQ_MAX_BATCH_JOBS"
                )
        if self.dead_letter_max_length < 0:
            raise ConfigError("JOBQ_DEAD_LETTER_MAX_LENGTH must be >= 0 (0: no bound)")
        for name, port in {
            "JOBQ_WORKER_METRICS_PORT": self.worker_metrics_port,
            "JOBQ_SCHEDULER_METRICS_PORT": self.scheduler_metrics_port,
        }.items():
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a port number (0: off), not {port}")
        for name, value in {
            "JOBQ_SUBMIT_MAX_IN_FLIGHT": self.submit_max_in_flight,
            "JOBQ_TOKEN_CLIENT_FAILURES_PER_MINUTE": self.token_client_failures_per_minute,
            "JOBQ_TOKEN_ADDRESS_FAILURES_PER_MINUTE": self.token_address_failures_per_minute,
        }.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0 (0: no limit), not {value}")
        if self.oidc_issuer and not (self.oidc_jwks_url and self.oidc_audience):
            raise ConfigError("JOBQ_OIDC_ISSUER needs JOBQ_OIDC_JWKS_URL and JOBQ_OIDC_AUDIENCE")
        if self.oidc_issuer and self.oidc_issuer == self.jwt_issuer:
            raise ConfigError("JOBQ_OIDC_ISSUER must differ from JOBQ_JWT_ISSUER")
        if not self.oidc_algorithm_list or not set(self.oidc_algorithm_list) <= OIDC_ALGORITHMS:
            raise ConfigError(f"JOBQ_OIDC_ALGORITHMS takes some of {sorted(OIDC_ALGORITHMS)}")
        trace_url = urlsplit(self.ui_trace_url)
        if self.ui_trace_url and (
            trace_url.scheme not in ("http", "https") or "{trace_id}" not in self.ui_trace_url
        ):
            raise ConfigError("JOBQ_UI_TRACE_URL must be an http(s) URL holding {trace_id}")
        jwks = urlsplit(self.oidc_jwks_url)
        if self.oidc_issuer and not (
            jwks.scheme == "https" or jwks.hostname in ("127.0.0.1", "::1", "localhost")
        ):
            raise ConfigError("JOBQ_OIDC_JWKS_URL must be https (plain http on loopback only)")

    def signing_secret(self) -> str:
        """The JWT signing secret, from ``JOBQ_JWT_SECRET`` or the file ``JOBQ_JWT_SECRET_FILE``."""
        secret = self.jwt_secret
        if not secret and self.jwt_secret_file:
            try:
                secret = Path(self.jwt_secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read JOBQ_JWT_SECRET_FILE: {exc}") from None
        if not secret:
            raise ConfigError(
                "set JOBQ_JWT_SECRET (or JOBQ_JWT_SECRET_FILE) to at least 32 random characters, "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return secret

    @property
    def oidc_algorithm_list(self) -> tuple[str, ...]:
        return tuple(csv_list(self.oidc_algorithms))

    @property
    def declared_queues(self) -> list[str]:
        return ["default", *(q for q in csv_list(self.queues) if q != "default")]

    @property
    def consumed_queues(self) -> list[str]:
        return csv_list(self.worker_queues)

    @property
    def handler_modules(self) -> list[str]:
        return csv_list(self.handlers)

    @property
    def mark_delay_seconds(self) -> float:
        """How long confirms wait to be recorded (``shared.outbox``): long enough that most
        jobs are claimed first (the claim records the publish, so no UPDATE is needed), well
        within ``republish_after_seconds`` so the scheduler sees them recorded."""
        return min(5.0, self.republish_after_seconds / 4)

    @property
    def sync_database_url(self) -> str:
        """The database URL as libpq/asyncpg spells it (no SQLAlchemy driver suffix)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _flag(raw: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), any case."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)
