"""The ``jobq`` commands for people, over the HTTP API with the SDK: ``login`` stores a
profile, then ``ls``, ``get``, ``submit``, ``cancel``, ``retry``, ``watch`` and ``dead`` use it (or
``--credentials FILE``, ``--client-id``/``--client-secret``, ``--token``, or ``JOBQ_*``).
Tables and live views are rich's; ``--json`` prints what scripts want instead."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import jobq
import msgspec
from jobq import Credentials, Job, JobStatus, profiles
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shared.errors import ConfigError

DEFAULT_API_URL = "http://127.0.0.1:8080"

STYLE = {
    JobStatus.SUCCEEDED: "green",
    JobStatus.DEAD: "bold red",
    JobStatus.CANCELED: "dim",
    JobStatus.RUNNING: "cyan",
    JobStatus.RETRYING: "yellow",
}


def http_args(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Who calls the API: a stored profile unless credentials or a token are given."""
    sp.add_argument("--url", default=os.environ.get("JOBQ_API_URL"), help="the API's base URL")
    sp.add_argument("--profile", default="default", help="stored by `jobq login` (default)")
    sp.add_argument("--credentials", metavar="FILE", help="JSON with client_id, client_secret")
    sp.add_argument("--client-id", default=os.environ.get("JOBQ_CLIENT_ID"))
    sp.add_argument("--client-secret", default=os.environ.get("JOBQ_CLIENT_SECRET"))
    sp.add_argument("--token", default=os.environ.get("JOBQ_TOKEN"), help="a ready bearer token")
    return sp


def credentials(args: argparse.Namespace) -> Credentials:
    url = args.url or DEFAULT_API_URL
    if args.credentials:
        try:
            return Credentials.from_file(args.credentials, url)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read credentials from {args.credentials}: {exc}") from None
    if args.client_id and args.client_secret:
        return Credentials(url, args.client_id, args.client_secret)
    stored = profiles.load(args.profile)
    return Credentials(args.url or stored.url, stored.client_id, stored.client_secret)


def client(args: argparse.Namespace) -> jobq.Client:
    if args.token:
        return jobq.Client(url=args.url or DEFAULT_API_URL, token=args.token)
    return jobq.Client(credentials(args))


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(0, seconds):.0f}s ago"


def _progress(job: Job) -> str:
    """A running job's last progress report, as ``40% resizing``."""
    p = job.progress
    if p is None or job.status is not JobStatus.RUNNING:
        return ""
    return f"{p.fraction:.0%} {p.message}".strip()


def _status(status: JobStatus) -> Text:
    return Text(str(status), style=STYLE.get(status, ""))


def jobs_table(jobs: Iterable[Job], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column, width in (
        ("id", 36), ("type", 10), ("queue", 7), ("status", 9), ("attempts", 3), ("created", 7),
        ("progress", 8), ("last error", 10),
    ):  # fmt: skip
        table.add_column(column, min_width=width, no_wrap=True, overflow="ellipsis")
    for j in jobs:
        error = (j.last_error or {}).get("message", "") if isinstance(j.last_error, dict) else ""
        table.add_row(
            *map(Text, (str(j.id), j.type, j.queue)), _status(j.status),
            *map(Text, (f"{j.attempts}/{j.max_attempts}", _ago(j.created_at), _progress(j))),
            Text(str(error)[:60]),
        )  # fmt: skip
    return table


def cmd_login(args: argparse.Namespace) -> int:
    """Ask for the secret (never an argument), check it against the API, store the profile."""
    url = args.url or DEFAULT_API_URL
    if args.credentials:
        creds = credentials(args)
    else:
        client_id = args.client_id or input("client id: ").strip()
        secret = getpass.getpass("client secret: ") if sys.stdin.isatty() else sys.stdin.readline()
        creds = Credentials(url, client_id, secret.strip())
    with jobq.Client(creds) as c:
        c.queues()  # a token, and a call with it: the credentials work
    path = profiles.save(creds, args.profile)
    print(
        f"jobq: logged in to {creds.url} as {creds.client_id}; profile {args.profile!r} in {path}"
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    with client(args) as c:
        print(c.token())
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    found = {"status": args.status, "type": args.type, "queue": args.queue}
    return {k: v for k, v in found.items() if v}


def _first(jobs: Iterator[Job], n: int) -> list[Job]:
    return [j for _, j in zip(range(n), jobs, strict=False)]


def cmd_ls(args: argparse.Namespace) -> int:
    with client(args) as c:
        jobs = _first(c.list(page_size=min(args.limit, 500), **_filters(args)), args.limit)
    if args.json:
        for j in jobs:
            print(_json(j))
    else:
        Console().print(jobs_table(jobs))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.get(args.job_id)
    if args.json:
        print(_json(job))
        return 0
    table = Table(show_header=False, title=f"job {job.id}", title_justify="left")
    for field in job.__struct_fields__:
        value = getattr(job, field)
        text = _json(value) if isinstance(value, dict | list) else str(value)
        table.add_row(Text(field), _status(job.status) if field == "status" else Text(text))
    Console().print(table)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise ConfigError(f"--payload is not JSON: {exc}") from None
    with client(args) as c:
        job = c.submit(
            args.type, payload, queue=args.queue, priority=args.priority, delay=args.delay,
            idempotency_key=args.idempotency_key,
        )  # fmt: skip
        if args.wait is not None:
            job = _wait_showing(c, job, args.wait, quiet=args.json)
    print(_json(job) if args.json else f"{job.id} {job.status}")
    if job.status is JobStatus.DEAD:
        return 1
    return 0 if args.wait is None or job.status.is_terminal else 3


def _wait_showing(c: jobq.Client, job: Job, seconds: float, quiet: bool) -> Job:
    """Wait for the job with a spinner that shows its status (short polls, so it moves)."""
    console = Console(stderr=True, quiet=quiet)
    deadline = time.monotonic() + seconds
    with console.status(f"{job.id}: {job.status}") as status:
        while not job.status.is_terminal and (left := deadline - time.monotonic()) > 0:
            try:
                job = c.wait(job.id, timeout=min(left, 2.0))
            except jobq.WaitTimeout as timeout:
                job = timeout.job
            shown = f"{job.id}: {job.status} (attempt {job.attempts}/{job.max_attempts})"
            status.update(f"{shown} {_progress(job)}".rstrip())
    return job


def cmd_cancel(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.cancel(args.job_id)
    print(f"{job.id} {job.status}{' (cancel requested)' if job.cancel_requested else ''}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """One job by id, or every job a filter matches after a count and a confirmation."""
    with client(args) as c:
        if args.job_id:
            print(f"{c.retry(args.job_id).id} queued")
            return 0
        if not args.status:
            raise ConfigError(
                "give a job id, or a filter: --status dead|canceled [--type] [--queue]"
            )
        matched = list(c.list(page_size=500, **_filters(args)))
        if not matched:
            print("jobq: no job matches")
            return 0
        if not args.yes and not _confirm(f"retry {len(matched)} job(s)?"):
            print("jobq: nothing retried")
            return 1
        failed = 0
        for j in matched:
            try:
                c.retry(j.id)
            except jobq.Conflict:
                failed += 1  # it moved on meanwhile (retried by someone else)
    print(f"jobq: retried {len(matched) - failed} of {len(matched)} job(s)")
    return 0


def _dead_filter(args: argparse.Namespace) -> dict[str, Any]:
    found = {"queue": args.queue, "type": args.type, "error": args.error, "since": args.since,
             "until": args.until}  # fmt: skip
    return {k: v for k, v in found.items() if v}


def cmd_dead_ls(args: argparse.Namespace) -> int:
    """Dead jobs, those that died last first."""
    with client(args) as c:
        page = min(args.limit, 500)
        jobs = _first(c.dead(args.tenant, page_size=page, **_dead_filter(args)), args.limit)
    if args.json:
        for j in jobs:
            print(_json(j))
        return 0
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("id", "type", "queue", "died", "attempts", "error class", "message"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for j in jobs:
        error = j.last_error if isinstance(j.last_error, dict) else {}
        table.add_row(
            str(j.id), j.type, j.queue, _ago(j.finished_at), f"{j.attempts}/{j.max_attempts}",
            str(error.get("type", "")), str(error.get("message", ""))[:60],
        )  # fmt: skip
    Console().print(table)
    return 0


def cmd_dead_show(args: argparse.Namespace) -> int:
    """A dead job: its fields, every error it met, and who replayed it."""
    with client(args) as c:
        letter = c.dead_letter(args.job_id, args.tenant)
    if args.json:
        print(_json(letter))
        return 0
    job = letter.job
    console = Console()
    console.print(
        f"[bold]{job.id}[/]  {job.type}  queue={job.queue}  ", _status(job.status),
        f"  attempts {job.attempts}/{job.max_attempts}",
    )  # fmt: skip
    console.print(f"payload: {_json(job.payload)}", markup=False)
    errors = Table(title="errors", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("attempt", "class", "message"):
        errors.add_column(column)
    for e in job.errors:
        e = e if isinstance(e, dict) else {"message": str(e)}
        errors.add_row(str(e.get("attempt", "")), str(e.get("type", "")), str(e.get("message")))
    console.print(errors)
    if letter.replays:
        replays = Table(title="replays", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("at", "by", "queue", "payload"):
            replays.add_column(column)
        for r in letter.replays:
            queue = r.queue_after if r.queue_after == r.queue_before else (
                f"{r.queue_before} -> {r.queue_after}"
            )  # fmt: skip
            payload = f"replaced ({(r.payload_digest or '')[:12]})" if r.payload_replaced else ""
            replays.add_row(r.at.isoformat(timespec="seconds"), r.actor, queue, payload)
        console.print(replays)
    return 0


def cmd_dead_replay(args: argparse.Namespace) -> int:
    """Job ids, or the ``--limit`` that died last of those a filter matches after a
    confirmation; one idempotency key for the command, so its retries never replay twice."""
    filters = _dead_filter(args)
    if bool(args.job_ids) == bool(filters):
        raise ConfigError(
            "give job ids, or a filter (--queue, --type, --error, --since, --until), not both"
        )
    options: dict[str, Any] = {"queue": args.to_queue, "tenant": args.tenant}
    if args.payload is not None:
        try:
            options["payload"] = json.loads(args.payload)
        except ValueError as exc:
            raise ConfigError(f"--payload is not JSON: {exc}") from None
    with client(args) as c:
        if args.job_ids:
            done = c.replay(args.job_ids, **options, idempotency_key=args.idempotency_key)
        else:
            matched = c.purge(tenant=args.tenant, **filters).matched
            wanted = min(matched, args.limit)
            if not wanted:
                print("jobq: no dead job matches")
                return 0
            if not args.yes and not _confirm(f"replay {wanted} of {matched} dead job(s)?"):
                print("jobq: nothing replayed")
                return 1
            done = c.replay(
                filter=filters, limit=args.limit, **options, idempotency_key=args.idempotency_key
            )
    if args.json:
        print(_json(done))
        return 0
    for r in done.replayed:
        moved = f" ({r.queue_before} -> {r.queue_after})" if r.queue_before != r.queue_after else ""
        print(f"{r.id} queued{moved}{' with a new payload' if r.payload_replaced else ''}")
    for skipped in done.skipped:
        status = f" ({skipped.status})" if skipped.status else ""
        print(f"{skipped.id} skipped: {skipped.reason}{status}")
    again = " (the key's first result; nothing replayed now)" if done.repeated else ""
    print(f"jobq: replayed {len(done.replayed)}, skipped {len(done.skipped)}{again}")
    return 0


def cmd_dead_purge(args: argparse.Namespace) -> int:
    """Count what a filter matches; delete it only with ``--yes``."""
    filters = _dead_filter(args)
    with client(args) as c:
        counted = c.purge(tenant=args.tenant, **filters)
        if not args.yes:
            print(f"jobq: {counted.matched} dead job(s) match; add --yes to delete them")
            return 0
        done = c.purge(dry_run=False, tenant=args.tenant, **filters)
    print(f"jobq: deleted {done.deleted} dead job(s) (audit record {done.action_id})")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} Confirm with --yes (stdin is not a terminal)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_watch(args: argparse.Namespace) -> int:
    """Queues and recent jobs, redrawn every ``--interval`` seconds (``--count`` times)."""
    with client(args) as c, Live(console=Console(), auto_refresh=False) as live:
        shown = 0
        while args.count is None or shown < args.count:
            live.update(_snapshot(c, args), refresh=True)
            shown += 1
            if args.count is None or shown < args.count:
                time.sleep(args.interval)
    return 0


def _snapshot(c: jobq.Client, args: argparse.Namespace) -> Group:
    queues = Table(title="queues", title_justify="left")
    statuses = [s.value for s in JobStatus]
    for column in ("queue", *statuses):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in c.queues():
        queues.add_row(Text(q.name), *(Text(str(q.counts.get(s, 0))) for s in statuses))
    recent = _first(c.list(page_size=args.jobs, **_filters(args)), args.jobs)
    return Group(queues, jobs_table(recent, title=f"latest {len(recent)} jobs"))


def add_commands(sub: Any) -> None:
    """The commands for people, on ``jobq``'s parser."""
    login = http_args(sub.add_parser("login", help="store a profile (asks for the secret)"))
    login.set_defaults(func=cmd_login)
    http_args(sub.add_parser("token", help="print a bearer token")).set_defaults(func=cmd_token)

    ls = http_args(sub.add_parser("ls", help="list jobs, newest first"))
    ls.add_argument("--status", choices=[s.value for s in JobStatus])
    ls.add_argument("--type")
    ls.add_argument("--queue")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON job per line")
    ls.set_defaults(func=cmd_ls)

    get = http_args(sub.add_parser("get", help="show a job"))
    get.add_argument("job_id")
    get.add_argument("--json", action="store_true")
    get.set_defaults(func=cmd_get)

    submit = http_args(sub.add_parser("submit", help="submit a job"))
    submit.add_argument("type")
    submit.add_argument("--payload", default="null", help="JSON")
    submit.add_argument("--queue")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--delay", type=float, help="seconds")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", type=float, metavar="SECONDS", help="wait for a final state")
    submit.add_argument("--json", action="store_true")
    submit.set_defaults(func=cmd_submit)

    cancel = http_args(sub.add_parser("cancel", help="cancel a job"))
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_cancel)

    retry = http_args(sub.add_parser("retry", help="retry a dead or canceled job, or many"))
    retry.add_argument("job_id", nargs="?")
    retry.add_argument("--status", choices=["dead", "canceled"])
    retry.add_argument("--type")
    retry.add_argument("--queue")
    retry.add_argument("--yes", action="store_true", help="do not ask")
    retry.set_defaults(func=cmd_retry)

    _dead_commands(sub)

    watch = http_args(sub.add_parser("watch", help="a live view of queues and recent jobs"))
    watch.add_argument("--interval", type=float, default=2.0)
    watch.add_argument("--jobs", type=int, default=15, help="recent jobs shown")
    watch.add_argument("--count", type=int, help="redraw this many times, then exit")
    watch.add_argument("--status", choices=[s.value for s in JobStatus])
    watch.add_argument("--type")
    watch.add_argument("--queue")
    watch.set_defaults(func=cmd_watch)


def _dead_commands(sub: Any) -> None:
    dead = sub.add_parser("dead", help="dead jobs: list, show, replay, purge").add_subparsers(
        dest="dead_command", required=True
    )

    def filtered(name: str, help_: str) -> argparse.ArgumentParser:
        sp = http_args(dead.add_parser(name, help=help_))
        sp.add_argument("--queue", help="the queue they died in")
        sp.add_argument("--type")
        sp.add_argument("--error", help="the error class (last_error.type), e.g. TimeoutError")
        sp.add_argument("--since", help="died at or after (RFC 3339)")
        sp.add_argument("--until", help="died before (RFC 3339)")
        sp.add_argument("--tenant", help="another tenant's (admin only)")
        return sp

    ls = filtered("ls", "list dead jobs, those that died last first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON job per line")
    ls.set_defaults(func=cmd_dead_ls)

    show = http_args(dead.add_parser("show", help="a dead job, its errors and its replays"))
    show.add_argument("job_id")
    show.add_argument("--tenant", help="another tenant's (admin only)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_dead_show)

    replay = filtered("replay", "queue dead jobs again (ids, or a filter)")
    replay.add_argument("job_ids", nargs="*")
    replay.add_argument("--limit", type=int, default=100, help="with a filter (at most 1000)")
    replay.add_argument("--to-queue", help="move them to this declared queue")
    replay.add_argument("--payload", help="JSON: replaces the payload (one job id)")
    replay.add_argument("--idempotency-key", help="default: one made up for this command")
    replay.add_argument("--yes", action="store_true", help="do not ask (with a filter)")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=cmd_dead_replay)

    purge = filtered("purge", "count the dead jobs a filter matches; delete them with --yes")
    purge.add_argument("--yes", action="store_true", help="delete them")
    purge.set_defaults(func=cmd_dead_purge)
