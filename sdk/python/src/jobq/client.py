"""``Client`` (blocking) and ``AsyncClient``: the same calls, moved by httpx.

Both follow ``jobq.calls``: a token is fetched from the client credentials and renewed before
it expires (and once more if the API answers 401, e.g. after a key rotation); 429, 503 and
lost connections are tried again within the retry policy, honouring ``Retry-After``; submits
always carry an idempotency key, so no retry can make a second job.
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Self, TypeVar

import httpx

from jobq import calls, profiles
from jobq.calls import Call, Credentials, RetryPolicy, TokenCache
from jobq.errors import RetryAfter, Unavailable, WaitTimeout, error_from
from jobq.handlers import Handler, marked
from jobq.models import DeadLetter, Heartbeat, Job, JobType, Lease, Purge, Queue, Replay

T = TypeVar("T")
#: A function marked with ``@jobq.handler``, or its ``Handler``.
HandlerLike = Callable[..., Any] | Handler


@dataclass(frozen=True, slots=True)
class _Again:
    """Send the call again after ``delay`` seconds (``renew``: with a new token)."""

    delay: float
    renew: bool = False


class _Session:
    """Everything a client decides about one call, apart from moving bytes and sleeping."""

    def __init__(
        self,
        credentials: Credentials | None,
        url: str | None,
        client_id: str | None,
        client_secret: str | None,
        token: str | None,
        retry: RetryPolicy,
    ) -> None:
        if credentials is None and url and client_id and client_secret:
            credentials = Credentials(url, client_id, client_secret)
        if credentials is None and not (url and token):
            credentials = Credentials.from_env()
        self.credentials = credentials
        self.url = (credentials.url if credentials else url or "").rstrip("/")
        self.static_token = token
        self.tokens = TokenCache()
        self.retry = retry

    def bearer_call(self) -> Call[Any] | None:
        """The token request to make first, if the token is missing or due for renewal."""
        if self.static_token or self.tokens.fresh(time.monotonic()):
            return None
        assert self.credentials is not None
        return calls.token(self.credentials)

    def store_token(self, answer: Any) -> None:
        self.tokens.store(answer, time.monotonic())

    def request(self, call: Call[Any]) -> dict[str, Any]:
        headers = dict(call.headers)
        if call.auth:
            bearer = self.static_token or self.tokens.fresh(time.monotonic())
            headers["authorization"] = f"Bearer {bearer}"
        return {
            "method": call.method,
            "url": call.path,
            "json": call.json,
            "data": call.form,
            "params": call.params,
            "headers": headers,
        }

    def answer(
        self, call: Call[T], response: httpx.Response, attempt: int, renewed: bool
    ) -> T | _Again:
        """The decoded answer, or when to send again; raises what cannot be retried."""
        if response.status_code == 401 and call.auth and self.credentials and not renewed:
            self.tokens.drop()  # expired early, or signed by a key rotated out: renew once
            return _Again(0.0, renew=True)
        if response.is_success:
            return call.decode(response.content)
        error = error_from(
            response.status_code, response.content, response.headers.get("retry-after")
        )
        if isinstance(error, RetryAfter) and attempt < self.retry.attempts:
            return _Again(self.retry.delay(attempt, error.retry_after))
        raise error

    def unreachable(self, call: Call[Any], exc: httpx.TransportError, attempt: int) -> _Again:
        """No answer: again, if the call allows it (``Call.resend``); else ``Unavailable``."""
        unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if (call.resend == "always" or unsent) and attempt < self.retry.attempts:
            return _Again(self.retry.delay(attempt, None))
        raise Unavailable(f"no answer from {self.url}: {exc!r}", 0) from exc


def _job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A batch entry from a mapping of ``submit``'s arguments, with a key if it had none."""
    fields = dict(job)
    key = fields.pop("idempotency_key", None) or calls.new_key()
    return {**calls.job_fields(**fields), "idempotency_key": key}


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Client(Generic[H]):
    """What both clients are built from: ``Credentials``, ``url`` + ``client_id`` +
    ``client_secret``, ``url`` + a ready ``token``, or (nothing given) ``JOBQ_URL``,
    ``JOBQ_CLIENT_ID`` and ``JOBQ_CLIENT_SECRET``. ``timeout`` bounds each request (reading
    an answer may take a minute more: a long-poll holds it back)."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token: str | None = None,
        retry: RetryPolicy = calls.DEFAULT_RETRY,
        timeout: float = 30.0,
    ) -> None:
        self._s = _Session(credentials, url, client_id, client_secret, token, retry)
        self._http: H = self._open(httpx.Timeout(timeout, read=timeout + calls.MAX_WAIT_SECONDS))

    def _open(self, timeout: httpx.Timeout) -> H:
        raise NotImplementedError

    @classmethod
    def from_file(cls, path: str, url: str | None = None, **options: Any) -> Self:
        """From a credentials file like the one ``jobq init`` writes."""
        return cls(Credentials.from_file(path, url), **options)

    @classmethod
    def from_profile(cls, name: str = "default", **options: Any) -> Self:
        """From the credentials ``jobq login`` stored as ``name``."""
        return cls(profiles.load(name), **options)


class Client(_Client[httpx.Client]):
    """jobq's HTTP API, blocking; a context manager (or ``close`` it)."""

    def _open(self, timeout: httpx.Timeout) -> httpx.Client:
        return httpx.Client(base_url=self._s.url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        attempt, renewed = 0, False
        while True:
            attempt += 1
            if call.auth and (first := self._s.bearer_call()) is not None:
                self._s.store_token(self._send(first))
            try:
                response = self._http.request(**self._s.request(call))
                outcome = self._s.answer(call, response, attempt, renewed)
            except httpx.TransportError as exc:
                outcome = self._s.unreachable(call, exc, attempt)
            if not isinstance(outcome, _Again):
                return outcome
            renewed = renewed or outcome.renew
            time.sleep(outcome.delay)

    def token(self) -> str:
        """A bearer token for this client: the one in hand while fresh, else a new one."""
        if (first := self._s.bearer_call()) is not None:
            self._s.store_token(self._send(first))
        return self._s.static_token or self._s.tokens.value or ""

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit one job; what is left out takes the queue's default. The same
        ``idempotency_key`` again returns the original job (one is made up if none is given,
        so the client's own retries never submit twice)."""
        fields = calls.job_fields(
            type, payload, queue=queue, priority=priority, delay=delay, run_at=run_at,
            max_attempts=max_attempts, timeout=timeout,
        )  # fmt: skip
        return self._send(calls.submit(fields, idempotency_key or calls.new_key()))

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Submit jobs given as mappings of ``submit``'s arguments, in batches of the API's
        limit (each batch all or none, in order)."""
        batches = calls.chunks([_job(j) for j in jobs])
        return [job for b in batches for job in self._send(calls.submit_batch(b)).items]

    def get(self, job_id: uuid.UUID | str) -> Job:
        return self._send(calls.get(job_id))

    def list(self, **filters: Any) -> Iterator[Job]:
        """The client's jobs, newest first, page after page (``status``, ``type``, ``queue``,
        ``created_after``, ``created_before``, ``page_size``)."""
        cursor: str | None = None
        while True:
            page = self._send(calls.page(cursor, **filters))
            yield from page.items
            if (cursor := page.next_cursor) is None:
                return

    def cancel(self, job_id: uuid.UUID | str) -> Job:
        """Cancel a waiting job, or ask a running one to stop; ``Conflict`` once it is final."""
        return self._send(calls.cancel(job_id))

    def retry(self, job_id: uuid.UUID | str) -> Job:
        """Queue a dead or canceled job again with a fresh attempt budget."""
        return self._send(calls.retry(job_id))

    def queues(self) -> builtins.list[Queue]:
        """The declared queues, with this client's jobs in each by status."""
        return self._send(calls.queues())

    def types(self) -> builtins.list[JobType]:
        """The job types this client's tenant may submit (with their schemas and defaults)."""
        return self._send(calls.types())

    def register_types(self, handlers: Iterable[HandlerLike]) -> builtins.list[JobType]:
        """HTTP workers: say which types they serve (``@jobq.handler`` functions), for this
        client's tenant; again every minute while they run (``HttpWorker`` does). Needs
        ``jobs:work``."""
        return self._send(calls.register_types([marked(h) for h in handlers]))

    def lease(
        self,
        queues: Iterable[str] = ("default",),
        *,
        types: Iterable[str] | None = None,
        max_jobs: int = 1,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> builtins.list[Lease]:
        """HTTP workers: up to ``max_jobs`` jobs of this client's tenant, waiting up to
        ``wait`` seconds (at most 30) for one; ``[]`` if none came. Needs ``jobs:work``."""
        return self._send(_lease_call(queues, types, max_jobs, wait, lease_seconds))

    def heartbeat(
        self,
        lease: Lease,
        lease_seconds: float | None = None,
        progress: tuple[float, str] | None = None,
    ) -> Heartbeat:
        """Keep holding ``lease`` (and report ``(fraction, message)``); ``Conflict`` once it
        is lost (stop the job's side effects)."""
        return self._send(calls.heartbeat(lease.id, lease.lease_id, lease_seconds, progress))

    def complete(self, lease: Lease, result: Any = None) -> Job:
        """Record the leased job's success; ``Conflict`` if the lease no longer holds it."""
        return self._send(calls.complete(lease.id, lease.lease_id, result))

    def fail(
        self, lease: Lease, message: str, *, error_type: str = "Error", retryable: bool = True
    ) -> Job:
        """Record a failed attempt: retried after a backoff while attempts remain (unless
        not ``retryable``: dead at once)."""
        return self._send(calls.fail(lease.id, lease.lease_id, message, error_type, retryable))

    def wait(self, job_id: uuid.UUID | str, timeout: float | None = None) -> Job:
        """The job once it is final; ``WaitTimeout`` (with the job as last seen) if it is not
        within ``timeout`` seconds (``None``: no limit)."""
        deadline = _Deadline(timeout)
        while True:
            job = self._send(calls.wait(job_id, deadline.left()))
            if deadline.done(job):
                return job

    def dead(self, tenant: str | None = None, **filters: Any) -> Iterator[Job]:
        """Dead jobs, those that died last first, page after page (``queue``, ``type``,
        ``error``, ``since``, ``until``, ``page_size``; ``tenant``: admin only)."""
        cursor: str | None = None
        while True:
            page = self._send(calls.dead_page(cursor, tenant, **filters))
            yield from page.items
            if (cursor := page.next_cursor) is None:
                return

    def dead_letter(self, job_id: uuid.UUID | str, tenant: str | None = None) -> DeadLetter:
        """A dead job with its error history and its replays."""
        return self._send(calls.dead_letter(job_id, tenant))

    def replay(
        self,
        ids: Iterable[uuid.UUID | str] | None = None,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        queue: str | None = None,
        payload: Any = calls.KEEP,
        tenant: str | None = None,
        idempotency_key: str | None = None,
    ) -> Replay:
        """Queue dead jobs again with a fresh attempt budget: ``ids``, or the ``limit`` that
        died last of those ``filter`` (``calls.dead_filter``'s fields) matches; into another
        ``queue``, or (one id) with a new ``payload``. Never replays a job twice."""
        body = _replay_body(ids, filter, limit, queue, payload, tenant)
        return self._send(calls.replay(body, idempotency_key or calls.new_key()))

    def purge(self, *, dry_run: bool = True, tenant: str | None = None, **filter: Any) -> Purge:
        """Count (``dry_run``, the default) or delete the dead jobs ``filter`` matches."""
        return self._send(calls.purge(_purge_body(dry_run, tenant, filter)))


class AsyncClient(_Client[httpx.AsyncClient]):
    """``Client``'s calls for asyncio; an async context manager (or ``aclose`` it)."""

    def _open(self, timeout: httpx.Timeout) -> httpx.AsyncClient:
        self._token_lock = asyncio.Lock()  # one token renewal for all the calls that need it
        return httpx.AsyncClient(base_url=self._s.url, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempt, renewed = 0, False
        while True:
            attempt += 1
            if call.auth and self._s.bearer_call() is not None:
                async with self._token_lock:
                    if (first := self._s.bearer_call()) is not None:
                        self._s.store_token(await self._send(first))
            try:
                response = await self._http.request(**self._s.request(call))
                outcome = self._s.answer(call, response, attempt, renewed)
            except httpx.TransportError as exc:
                outcome = self._s.unreachable(call, exc, attempt)
            if not isinstance(outcome, _Again):
                return outcome
            renewed = renewed or outcome.renew
            await asyncio.sleep(outcome.delay)

    async def token(self) -> str:
        if self._s.bearer_call() is not None:
            async with self._token_lock:
                if (first := self._s.bearer_call()) is not None:
                    self._s.store_token(await self._send(first))
        return self._s.static_token or self._s.tokens.value or ""

    async def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout: int | None = None,  # noqa: ASYNC109 (the job's time limit, not this call's)
        idempotency_key: str | None = None,
    ) -> Job:
        fields = calls.job_fields(
            type, payload, queue=queue, priority=priority, delay=delay, run_at=run_at,
            max_attempts=max_attempts, timeout=timeout,
        )  # fmt: skip
        return await self._send(calls.submit(fields, idempotency_key or calls.new_key()))

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        out: list[Job] = []
        for batch in calls.chunks([_job(j) for j in jobs]):
            out += (await self._send(calls.submit_batch(batch))).items
        return out

    async def get(self, job_id: uuid.UUID | str) -> Job:
        return await self._send(calls.get(job_id))

    async def list(self, **filters: Any) -> AsyncIterator[Job]:
        cursor: str | None = None
        while True:
            page = await self._send(calls.page(cursor, **filters))
            for job in page.items:
                yield job
            if (cursor := page.next_cursor) is None:
                return

    async def cancel(self, job_id: uuid.UUID | str) -> Job:
        return await self._send(calls.cancel(job_id))

    async def retry(self, job_id: uuid.UUID | str) -> Job:
        return await self._send(calls.retry(job_id))

    async def queues(self) -> builtins.list[Queue]:
        return await self._send(calls.queues())

    async def types(self) -> builtins.list[JobType]:
        return await self._send(calls.types())

    async def register_types(self, handlers: Iterable[HandlerLike]) -> builtins.list[JobType]:
        return await self._send(calls.register_types([marked(h) for h in handlers]))

    async def lease(
        self,
        queues: Iterable[str] = ("default",),
        *,
        types: Iterable[str] | None = None,
        max_jobs: int = 1,
        wait: float = 0.0,
        lease_seconds: float | None = None,
    ) -> builtins.list[Lease]:
        return await self._send(_lease_call(queues, types, max_jobs, wait, lease_seconds))

    async def heartbeat(
        self,
        lease: Lease,
        lease_seconds: float | None = None,
        progress: tuple[float, str] | None = None,
    ) -> Heartbeat:
        return await self._send(calls.heartbeat(lease.id, lease.lease_id, lease_seconds, progress))

    async def complete(self, lease: Lease, result: Any = None) -> Job:
        return await self._send(calls.complete(lease.id, lease.lease_id, result))

    async def fail(
        self, lease: Lease, message: str, *, error_type: str = "Error", retryable: bool = True
    ) -> Job:
        return await self._send(
            calls.fail(lease.id, lease.lease_id, message, error_type, retryable)
        )

    async def wait(
        self,
        job_id: uuid.UUID | str,
        timeout: float | None = None,  # noqa: ASYNC109 (the same signature as Client.wait)
    ) -> Job:
        deadline = _Deadline(timeout)
        while True:
            job = await self._send(calls.wait(job_id, deadline.left()))
            if deadline.done(job):
                return job

    async def dead(self, tenant: str | None = None, **filters: Any) -> AsyncIterator[Job]:
        cursor: str | None = None
        while True:
            page = await self._send(calls.dead_page(cursor, tenant, **filters))
            for job in page.items:
                yield job
            if (cursor := page.next_cursor) is None:
                return

    async def dead_letter(self, job_id: uuid.UUID | str, tenant: str | None = None) -> DeadLetter:
        return await self._send(calls.dead_letter(job_id, tenant))

    async def replay(
        self,
        ids: Iterable[uuid.UUID | str] | None = None,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        queue: str | None = None,
        payload: Any = calls.KEEP,
        tenant: str | None = None,
        idempotency_key: str | None = None,
    ) -> Replay:
        body = _replay_body(ids, filter, limit, queue, payload, tenant)
        return await self._send(calls.replay(body, idempotency_key or calls.new_key()))

    async def purge(
        self, *, dry_run: bool = True, tenant: str | None = None, **filter: Any
    ) -> Purge:
        return await self._send(calls.purge(_purge_body(dry_run, tenant, filter)))


def _replay_body(
    ids: Iterable[uuid.UUID | str] | None,
    filter: Mapping[str, Any] | None,
    limit: int | None,
    queue: str | None,
    payload: Any,
    tenant: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if ids is not None:
        body["ids"] = [str(i) for i in ids]
    if filter is not None:
        body["filter"] = calls.dead_filter(**filter)
    optional = {"limit": limit, "queue": queue, "tenant": tenant}
    body.update({k: v for k, v in optional.items() if v is not None})
    if payload is not calls.KEEP:
        body["payload"] = payload
    return body


def _purge_body(dry_run: bool, tenant: str | None, filter: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"filter": calls.dead_filter(**filter), "dry_run": dry_run}
    if tenant is not None:
        body["tenant"] = tenant
    return body


def _lease_call(
    queues: Iterable[str],
    types: Iterable[str] | None,
    max_jobs: int,
    wait: float,
    lease_seconds: float | None,
) -> Call[builtins.list[Lease]]:
    return calls.lease(
        list(queues), None if types is None else list(types), max_jobs, wait, lease_seconds
    )


class _Deadline:
    """When ``wait`` gives up: ``None`` never."""

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float:
        return calls.MAX_WAIT_SECONDS if self.at is None else self.at - time.monotonic()

    def done(self, job: Job) -> bool:
        if job.status.is_terminal:
            return True
        if self.at is not None and time.monotonic() >= self.at:
            raise WaitTimeout(job)
        return False
