"""``jobq-http-worker`` (or ``python -m jobq``): run your ``@jobq.handler`` functions on jobs
leased over jobq's HTTP API, on a machine that has the SDK and not the server.

    jobq-http-worker --handlers myapp.jobs --queues media --concurrency 8

Credentials: ``--credentials FILE`` (as ``jobq init`` writes), ``--profile NAME`` (as ``jobq
login`` stores), or ``JOBQ_URL``, ``JOBQ_CLIENT_ID`` and ``JOBQ_CLIENT_SECRET``; the client needs
the ``jobs:work`` scope. SIGTERM or Ctrl-C stops leasing and lets running jobs finish. A
module that cannot be imported or declares no handler, or credentials that cannot be read,
end it with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from jobq import profiles
from jobq.calls import Credentials
from jobq.client import AsyncClient
from jobq.errors import JobqError
from jobq.handlers import Handler, HandlerModuleError, load
from jobq.http_worker import HttpWorker

log = logging.getLogger("jobq.http_worker")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobq-http-worker", description=__doc__.split("\n")[0])
    env = os.environ.get
    p.add_argument(
        "--handlers", default=env("JOBQ_HANDLERS", ""),
        help="modules declaring @jobq.handler functions, comma-separated (JOBQ_HANDLERS)",
    )  # fmt: skip
    p.add_argument(
        "--queues", default=env("JOBQ_WORKER_QUEUES", "default"),
        help="queues to lease from, comma-separated (JOBQ_WORKER_QUEUES; default: default)",
    )  # fmt: skip
    p.add_argument("--concurrency", type=int, default=4, help="jobs at once (default 4)")
    p.add_argument(
        "--lease-seconds", type=float, default=60.0,
        help="each lease's length, renewed at a third of it (default 60)",
    )  # fmt: skip
    p.add_argument("--url", help="the API (else the credentials' or JOBQ_URL)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--credentials", metavar="FILE", help="a credentials file")
    who.add_argument("--profile", help="a profile stored by `jobq login`")
    return p


def credentials(args: argparse.Namespace) -> Credentials:
    if args.credentials:
        try:
            return Credentials.from_file(args.credentials, args.url)
        except KeyError as exc:
            raise JobqError(f"{args.credentials} lacks {exc}") from None
    if args.profile:
        found = profiles.load(args.profile)
        return Credentials(args.url, found.client_id, found.client_secret) if args.url else found
    return Credentials.from_env({**os.environ, **({"JOBQ_URL": args.url} if args.url else {})})


async def serve(creds: Credentials, handlers: list[Handler], args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncClient(creds) as client:
        worker = HttpWorker(
            client, handlers, queues=_names(args.queues), concurrency=args.concurrency,
            lease_seconds=args.lease_seconds,
        )  # fmt: skip
        log.info(
            "http worker leasing from %s: queues %s, types %s",
            creds.url, ",".join(worker.queues), ",".join(sorted(worker.handlers)),
        )  # fmt: skip
        await worker.run(stop)
    log.info("http worker stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if not _names(args.handlers):
            raise JobqError("name the handler modules: --handlers myapp.jobs (or JOBQ_HANDLERS)")
        handlers = load(_names(args.handlers))
        creds = credentials(args)
    except (HandlerModuleError, JobqError, OSError, ValueError) as exc:
        print(f"jobq-http-worker: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(creds, handlers, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
