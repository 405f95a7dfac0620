"""Composition root of the API: ``create_app(settings)`` wires routes, auth, errors, telemetry.

Resources (engine, broker, stores, outbox) are owned by the lifespan; handlers receive them by name.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry.sdk.trace import TracerProvider

from services.api import errors, ui
from services.api.auth import PUBLIC_PATHS, Authenticator, BearerAuth
from services.api.bodies import JsonRequest
from services.api.broker_stats import BrokerStats
from services.api.dead_letters import DeadLetters
from services.api.keys import load_keyring
from services.api.leasing import LeaseHub
from services.api.limits import Budget, SubmitLimiter, TokenThrottle, WaiterCap
from services.api.oidc import JwksCache
from services.api.routes import (
    admin,
    auth,
    dead,
    health,
    jobs,
    leases,
    limits,
    queues,
    schedules,
    types,
)
from services.api.submission import Intake
from services.api.timing import SubmitTimer
from services.api.tokens import ExternalIssuer, TokenConfig
from services.api.types import TypeCatalog
from shared.coalesce import Coalescer
from shared.config import Settings
from shared.db.callbacks import CallbackStore
from shared.db.clients import ClientGrant, ClientStore
from shared.db.dashboard import DashboardStore
from shared.db.dead_letters import DeadLetterStore
from shared.db.jobs import JobStore
from shared.db.leases import LeaseStore
from shared.db.limits import LimitStore
from shared.db.queues import QueueStore
from shared.db.schedules import ScheduleStore
from shared.db.submits import SubmitStore
from shared.db.sweeps import SweepStore
from shared.db.tickets import TicketStore
from shared.db.types import TypeStore
from shared.metrics import Metrics
from shared.outbox import Outbox
from shared.runtime import service_resources


def create_app(
    settings: Settings,
    tracer_provider: TracerProvider | None = None,
    metrics: Metrics | None = None,
) -> Litestar:
    """The API; requests, publishes and statements are spans only with a ``tracer_provider``
    (``shared.telemetry.start_tracing``, when spans are exported): the middleware alone costs
    ~60 µs a request even for spans never sampled, and jobs get a trace id all the same."""
    tokens = token_config(settings)
    metrics = metrics or Metrics("api", counting=settings.metrics)
    external = _external_issuer(settings)
    authenticator = Authenticator(tokens, external)
    limiter = SubmitLimiter(
        Budget(settings.submit_rate_per_second, settings.submit_burst),
        Budget(settings.submit_rate_per_tenant, settings.submit_burst_per_tenant),
    )

    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        tracer = tracer_provider.get_tracer("jobq.api") if tracer_provider else None
        async with service_resources(settings, "api", tracer) as (engine, broker):
            store = JobStore(engine)
            clients = ClientStore(engine)
            outbox = Outbox(TicketStore(engine), broker, settings.mark_delay_seconds, metrics)
            lease_store = LeaseStore(engine)
            hub = LeaseHub(lease_store, outbox, settings.lease_poll_seconds)
            catalog = TypeCatalog(TypeStore(engine), settings.types_grace_seconds)
            intake = Intake(
                SubmitStore(engine), outbox, limiter, settings, metrics,
                accepted=hub.poke,
                catalog=catalog if settings.strict_types else None,
            )  # fmt: skip
            grants: Coalescer[uuid.UUID, ClientGrant | None] = Coalescer(
                clients.grants, max_items=1000, concurrency=2
            )
            broker_stats = BrokerStats(settings.management_url, settings.amqp_url, broker.topology)
            dead_store = DeadLetterStore(engine)
            dead_letters = DeadLetters(
                dead_store, outbox, settings, catalog if settings.strict_types else None
            )
            app.state.update(
                store=store,
                intake=intake,
                grants=grants,
                clients=clients,
                queue_store=QueueStore(engine),
                schedules=ScheduleStore(engine),
                broker=broker,
                broker_stats=broker_stats,
                outbox=outbox,
                leases=lease_store,
                hub=hub,
                catalog=catalog,
                dead_store=dead_store,
                dead_letters=dead_letters,
                limit_store=LimitStore(engine),
                callbacks=CallbackStore(engine),
                sweeps=SweepStore(engine),
                dashboard=DashboardStore(engine),
            )
            try:
                yield
            finally:
                await broker_stats.close()
                await intake.close()
                await hub.close()
                await grants.close()
                await outbox.close()
                if external:
                    await external.client.aclose()

    def from_state(name: str) -> Provide:
        def provide(state: State) -> Any:
            return state[name]

        return Provide(provide, sync_to_thread=False)

    def constant(value: Any) -> Provide:
        def provide() -> Any:
            return value

        return Provide(provide, sync_to_thread=False, use_cache=True)

    dependencies = {
        **{
            name: from_state(name)
            for name in (
                "store",
                "intake",
                "clients",
                "queue_store",
                "schedules",
                "broker",
                "broker_stats",
                "outbox",
                "leases",
                "hub",
                "catalog",
                "dead_store",
                "dead_letters",
                "limit_store",
                "callbacks",
                "sweeps",
                "dashboard",
            )
        },
        "settings": constant(settings),
        "metrics": constant(metrics),
        "tokens": constant(tokens),
        "waiters": constant(
            WaiterCap(
                settings.max_waiters,
                settings.max_waiters_per_tenant,
                settings.max_waiters_per_client,
            )
        ),
        "throttle": constant(
            TokenThrottle(
                Budget.per_minute(settings.token_client_failures_per_minute),
                Budget.per_minute(settings.token_address_failures_per_minute),
            )
        ),
    }
    return Litestar(
        route_handlers=[
            *auth.ROUTES,
            *health.ROUTES,
            Router(
                "/",
                route_handlers=[
                    *jobs.ROUTES,
                    *dead.ROUTES,
                    *leases.ROUTES,
                    *types.ROUTES,
                    *queues.ROUTES,
                    *schedules.ROUTES,
                    *admin.ROUTES,
                    *limits.ROUTES,
                ],
                security=[{"BearerToken": []}],
            ),
            *ui.routers(),
        ],
        lifespan=[resources],
        dependencies=dependencies,
        middleware=[
            DefineMiddleware(SubmitTimer, metrics=metrics),
            DefineMiddleware(
                BearerAuth,
                authenticator=authenticator,
                exclude=[*PUBLIC_PATHS, *ui.PUBLIC_PATHS],
                session_cookie=(ui.PREFIX, ui.SESSION),
            ),
        ],
        before_send=[ui.security_headers],
        template_config=ui.template_config(),
        exception_handlers=errors.EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_request_bytes,
        request_class=JsonRequest,
        plugins=[
            OpenTelemetryPlugin(
                OpenTelemetryConfig(
                    tracer_provider=tracer_provider,
                    exclude_spans=["send", "receive"],
                    # Probes, every few seconds, are not worth a trace each.
                    exclude=["^/health", "^/metrics"],
                )
            )
        ]
        if tracer_provider is not None
        else [],
        openapi_config=OpenAPIConfig(
            title="jobq",
            version="0.1.0",
            path="/schema",
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
                }
            ),
        ),
        logging_config=None,
    )


def token_config(settings: Settings) -> TokenConfig:
    """How this API issues and verifies its tokens; a bad key setting is a ``ConfigError``."""
    return TokenConfig(
        keys=load_keyring(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.jwt_ttl_seconds,
        leeway_seconds=settings.jwt_leeway_seconds,
    )


def _external_issuer(settings: Settings) -> JwksCache | None:
    if not settings.oidc_issuer:
        return None
    idp = ExternalIssuer(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        jwks_url=settings.oidc_jwks_url,
        algorithms=settings.oidc_algorithm_list,
        tenant_claim=settings.oidc_tenant_claim,
        scope_claim=settings.oidc_scope_claim,
    )
    return JwksCache(idp, httpx.AsyncClient(timeout=5.0, follow_redirects=False))
