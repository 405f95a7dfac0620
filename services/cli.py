"""The ``jobq`` command: the three services, local supervision, migrations, clients, a health
check for containers, and a small HTTP client for humans. Each subcommand imports its service lazily, so ``jobq worker``
never imports Litestar."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jobq.errors

from services.healthcheck import SERVICES
from shared.config import Settings, csv_list
from shared.errors import ConfigError, DependencyUnavailable

DEFAULT_API_URL = "http://127.0.0.1:8080"


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {}
    if getattr(args, "queues", None):
        overrides["worker_queues"] = args.queues
    if getattr(args, "concurrency", None):
        overrides["worker_concurrency"] = args.concurrency
    if getattr(args, "handlers", None):
        overrides["handlers"] = args.handlers
    if getattr(args, "processes", None):
        overrides["api_processes"] = args.processes
    return dataclasses.replace(settings, **overrides) if overrides else settings


def _setup_logging(settings: Settings) -> None:
    from shared.logging import setup_logging

    setup_logging(settings.log_level, settings.log_format)


def cmd_api(args: argparse.Namespace) -> int:
    from services.api.keys import load_keyring
    from services.api.main import main as serve
    from services.api.main import main_processes

    settings = _settings(args)
    _setup_logging(settings)
    load_keyring(settings)  # a bad key setting fails before the port is bound
    if settings.api_processes > 1 and args.fd is None:
        return main_processes(settings, settings.api_processes, args.host, args.port)
    serve(settings, args.host, args.port, fd=args.fd)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from services.worker.main import main as serve

    settings = _settings(args)
    _setup_logging(settings)
    serve(settings)
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from services.scheduler.main import main as serve

    settings = _settings(args)
    _setup_logging(settings)
    serve(settings)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from services.api.keys import load_keyring
    from services.supervisor import up, worker_ports

    settings = _settings(args)
    load_keyring(settings)
    url = f"http://{settings.api_host}:{settings.api_port}"
    ports = worker_ports(settings.worker_metrics_port, args.workers)
    print(
        f"jobq up: api on {url} ({settings.api_processes} process(es); OpenAPI: {url}/schema),"
        f" scheduler, {args.workers} worker(s).\n"
        f"  token:  .venv/bin/jobq token --credentials .jobq/admin.json   (written by jobq init)\n"
        f"  dashboard: {url}/ui (log in with the client_id and client_secret of that file)\n"
        f"  broker: http://127.0.0.1:15672 (RabbitMQ management, guest/guest)\n"
        f"  metrics: {url}/metrics, {_metrics_urls(settings, ports)}\n"
        f"  Ctrl-C stops everything.",
        flush=True,
    )
    api_args = ["--processes", str(settings.api_processes)]
    return up(args.workers, settings.shutdown_grace_seconds, worker_args(settings), api_args, ports)


def _metrics_urls(settings: Settings, worker_ports: list[int]) -> str:
    """Where the scheduler and the workers of ``jobq up`` serve their metrics."""
    host = settings.metrics_host
    urls = [f"scheduler http://{host}:{settings.scheduler_metrics_port}/metrics"] * bool(
        settings.scheduler_metrics_port
    )
    urls += [f"worker http://{host}:{port}/metrics" for port in worker_ports if port]
    return ", ".join(urls) or "(worker and scheduler metrics off)"


def worker_args(settings: Settings) -> list[str]:
    """What ``jobq up`` passes its workers: every worker flag it was given (the rest of the
    settings reach them through the environment)."""
    return [
        "--queues", settings.worker_queues,
        "--concurrency", str(settings.worker_concurrency),
        *(["--handlers", settings.handlers] if settings.handlers else []),
    ]  # fmt: skip


def cmd_health(args: argparse.Namespace) -> int:
    from services.healthcheck import probe

    healthy, line = probe(args.service, ready=args.ready, timeout=args.timeout)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db.migrate import ensure_database, upgrade

    settings = _settings(args)

    async def go() -> None:
        if await ensure_database(settings):
            print("created the database", file=sys.stderr)
        await upgrade(settings)

    _run_db(go(), settings)
    print("migrations applied")
    return 0


def _run_db(coro: Any, settings: Settings) -> Any:
    """Run a coroutine against the database, turning a refused connection into one line."""
    from shared.db.diagnose import database_problem

    try:
        return asyncio.run(coro)
    except (ConfigError, DependencyUnavailable):
        raise
    except Exception as exc:
        problem = database_problem(exc, settings.sync_database_url)
        if problem is None:
            raise
        raise DependencyUnavailable(problem) from None


async def _create_client(
    settings: Settings, name: str, tenant: str, scopes: list[str]
) -> dict[str, Any]:
    from shared.credentials import SCOPES, TENANT
    from shared.db.clients import ClientStore
    from shared.db.engine import make_engine

    if not TENANT.fullmatch(tenant):
        raise ConfigError(f"tenant {tenant!r} must match {TENANT.pattern}")
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ConfigError(f"unknown scopes {sorted(unknown)}; choose from {sorted(SCOPES)}")
    engine = make_engine(settings, "cli", pool_size=1)
    try:
        client, secret = await ClientStore(engine).register(name, tenant, scopes)
    finally:
        await engine.dispose()
    return {
        "client_id": str(client.id),
        "client_secret": secret,
        "callback_secret": client.callback_secret,
        "name": name,
        "tenant": tenant,
        "scopes": client.scopes,
    }


def cmd_clients(args: argparse.Namespace) -> int:
    from shared.db.clients import ClientStore
    from shared.db.engine import make_engine

    settings = _settings(args)
    if args.action == "create":
        scopes = csv_list(args.scopes)
        created = _run_db(_create_client(settings, args.name, args.tenant, scopes), settings)
        if args.json:
            print(json.dumps(created))
        else:
            print(
                f"client_id:       {created['client_id']}\n"
                f"client_secret:   {created['client_secret']}\n"
                f"callback_secret: {created['callback_secret']}\n"
                "(the secrets are shown once; store them now)"
            )
        return 0

    async def go() -> Any:
        engine = make_engine(settings, "cli", pool_size=1)
        try:
            store = ClientStore(engine)
            if args.action == "list":
                return await store.list()
            if args.action == "rotate-callback-secret":
                grace = settings.callback_secret_grace_seconds if args.grace is None else args.grace
                return await store.rotate_callback_secret(args.client_id, grace)
            return await store.revoke(args.client_id)
        finally:
            await engine.dispose()

    result = _run_db(go(), settings)
    if args.action == "rotate-callback-secret":
        if result is None:
            print("no such client", file=sys.stderr)
            return 1
        secret, until = result
        if args.json:
            print(json.dumps({
                "client_id": str(args.client_id), "callback_secret": secret,
                "previous_valid_until": until.isoformat() if until else None,
            }))  # fmt: skip
        else:
            print(
                f"callback_secret: {secret}\n(shown once; the previous one signs too "
                + (f"until {until.isoformat()})" if until else "no more)")
            )
        return 0
    if args.action == "list":
        for c in result:
            state = "revoked" if c.revoked_at else "active"
            print(
                f"{c.id}  {c.name:<20} tenant={c.tenant:<12} scopes={','.join(c.scopes)}  {state}"
            )
    elif not result:
        print("no such active client", file=sys.stderr)
        return 1
    else:
        print("revoked")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Everything ``make run`` needs once: signing secret, database, migrations, an admin."""
    import secrets

    from shared.db.clients import ClientStore
    from shared.db.engine import make_engine
    from shared.db.migrate import ensure_database, upgrade

    secret_file = Path(args.secret_file)
    if not os.environ.get("JOBQ_JWT_SECRET") and not secret_file.exists():
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    settings = _settings(args)
    admin_file = Path(args.admin_file)

    async def go() -> dict[str, Any] | None:
        from shared.runtime import connect_broker

        await ensure_database(settings)
        await upgrade(settings)
        broker = await connect_broker(settings, "jobq-init")  # declares the topology
        await broker.close()
        engine = make_engine(settings, "cli", pool_size=1)
        try:
            if await ClientStore(engine).any_admin():
                return None
        finally:
            await engine.dispose()
        return await _create_client(
            settings, "local-admin", "default", ["admin", "jobs:write", "jobs:read", "jobs:work"]
        )

    created = _run_db(go(), settings)
    if created is None:
        print(
            f"jobq init: database migrated; an admin client exists (credentials: {admin_file},"
            " if this machine created it)"
        )
        return 0
    admin_file.parent.mkdir(parents=True, exist_ok=True)
    admin_file.write_text(json.dumps(created, indent=2))
    admin_file.chmod(0o600)
    print(
        f"jobq init: created admin client (tenant 'default'); saved to {admin_file}:\n"
        f"  client_id:     {created['client_id']}\n  client_secret: {created['client_secret']}"
    )
    return 0


def cmd_broker_redeclare(args: argparse.Namespace) -> int:
    """Recreate broker queues that do not fit the settings (a new queue type, delivery limit or
    dead-letter bound): RabbitMQ cannot change them in place."""
    from shared.db.engine import make_engine
    from shared.db.queues import QueueStore
    from shared.db.tickets import TicketStore
    from shared.runtime import connect_broker

    settings = _settings(args)

    async def go() -> list[str]:
        engine = make_engine(settings, "cli", pool_size=1)
        broker = await connect_broker(settings, "jobq-cli", declare=not args.dead_letters)
        done = []
        try:
            if args.dead_letters:
                held = await broker.dead_letters_held()
                if held and not args.yes:
                    raise ConfigError(
                        f"{broker.topology.dead_queue} holds {held} messages, which recreating it"
                        " drops (PostgreSQL keeps every dead job): add --yes"
                    )
                await broker.redeclare_dead_letters()
                done.append(f"{broker.topology.dead_queue}: recreated, {held} messages dropped")
            queues = args.queues or ([] if args.dead_letters else settings.declared_queues)
            missing = await QueueStore(engine).missing(queues)
            if missing:
                raise ConfigError(f"not declared: {', '.join(missing)}")
            for queue in queues:
                held = await broker.redeclare_queue(queue)
                jobs = await TicketStore(engine).republish(queue)
                done.append(
                    f"{broker.topology.queue_name(queue)}: recreated; {held} tickets dropped,"
                    f" {jobs} queued jobs published again by the scheduler"
                )
        finally:
            await broker.close()
            await engine.dispose()
        return done

    for line in _run_db(go(), settings):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobq", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--processes", type=int, help="API processes on the port (JOBQ_API_PROCESSES)")
    # One of ``--processes`` N's children: accept on the parent's listening socket.
    api.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    api.set_defaults(func=cmd_api)

    for name, func, help_ in (
        ("worker", cmd_worker, "run a worker"),
        ("up", cmd_up, "run api, scheduler and workers, supervised"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--queues", help="comma-separated queues (JOBQ_WORKER_QUEUES)")
        sp.add_argument("--concurrency", type=int, help="jobs at once (JOBQ_WORKER_CONCURRENCY)")
        sp.add_argument(
            "--handlers",
            help="comma-separated modules of your handlers, e.g. myapp.jobs (JOBQ_HANDLERS)",
        )
        sp.set_defaults(func=func)
        if name == "up":
            sp.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
            sp.add_argument(
                "--api-processes", dest="processes", type=int, help="(JOBQ_API_PROCESSES)"
            )

    sub.add_parser("scheduler", help="run the scheduler").set_defaults(func=cmd_scheduler)
    sub.add_parser("migrate", help="create the database if missing and migrate it").set_defaults(
        func=cmd_migrate
    )

    health = sub.add_parser(
        "health", help="exit 0 if this container's service (or SERVICE) answers /health, else 1"
    )
    health.add_argument("service", nargs="?", choices=SERVICES, help="default: the container's")
    health.add_argument("--ready", action="store_true", help="ask /health/ready instead")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(func=cmd_health)

    init = sub.add_parser("init", help="first run: secret, database, migrations, admin client")
    init.add_argument(
        "--secret-file", default=os.environ.get("JOBQ_JWT_SECRET_FILE", ".jobq/jwt-secret")
    )
    init.add_argument("--admin-file", default=".jobq/admin.json")
    init.set_defaults(func=cmd_init)

    broker = sub.add_parser("broker", help="RabbitMQ's queues").add_subparsers(
        dest="broker_command", required=True
    )
    redeclare = broker.add_parser(
        "redeclare",
        help="recreate queues that do not fit the settings (stop the workers first)",
        description=cmd_broker_redeclare.__doc__,
    )
    redeclare.add_argument(
        "queues", nargs="*", help="job queues to recreate (default: every declared one)"
    )
    redeclare.add_argument(
        "--dead-letters", action="store_true", help="recreate the dead-letter queue too"
    )
    redeclare.add_argument("--yes", action="store_true", help="drop its messages without asking")
    redeclare.set_defaults(func=cmd_broker_redeclare)

    clients = sub.add_parser("clients", help="manage API clients").add_subparsers(
        dest="action", required=True
    )
    create = clients.add_parser("create", help="create a client (prints its secret once)")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", required=True, help="e.g. jobs:write,jobs:read")
    create.add_argument("--json", action="store_true")
    clients.add_parser("list", help="list clients (never secrets)")
    revoke = clients.add_parser("revoke", help="revoke a client")
    revoke.add_argument("client_id", type=uuid.UUID)
    rotate = clients.add_parser(
        "rotate-callback-secret",
        help="a new secret to sign the client's callbacks (prints it once)",
    )
    rotate.add_argument("client_id", type=uuid.UUID)
    rotate.add_argument(
        "--grace",
        type=float,
        help="seconds the previous secret signs too (JOBQ_CALLBACK_SECRET_GRACE_SECONDS; 0: none)",
    )
    rotate.add_argument("--json", action="store_true")
    for sp in (create, *clients.choices.values()):
        sp.set_defaults(func=cmd_clients)

    from services.console import add_commands

    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ConfigError, DependencyUnavailable, jobq.errors.JobqError) as exc:
        # A refusal from the API (not found, conflict, bad credentials) is 1; the rest 2.
        print(f"jobq: {exc}", file=sys.stderr)
        code = 1 if isinstance(exc, jobq.errors.JobqError) and exc.status else 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
