"""Declaring handlers: ``@handler`` on a function of your own package, sync or async.

    from jobq import JobContext, handler

    class Resize(msgspec.Struct):
        url: str
        width: int

    @handler("images.resize")
    async def resize(payload: Resize, ctx: JobContext) -> dict[str, str]:
        ...

The first parameter's annotation is what the payload is converted to (a msgspec Struct, a
dataclass, a TypedDict, ``dict`` or ``Any``); a payload that does not fit fails the job at once.
A second parameter receives the ``JobContext``. The decorator only marks the function (it stays
callable as it was); ``jobq worker --handlers pkg.module`` finds the marked functions of the
modules it is given.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar, get_type_hints, overload

import msgspec

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute ``@handler`` sets on the function it marks.
MARK = "__jobq_handler__"


class PermanentError(Exception):
    """Raise it from a handler when running the job again cannot help: the job is dead at once
    (with this error recorded), whatever attempts it has left."""


class InvalidPayload(PermanentError):
    """The job's payload does not fit the handler's annotation."""


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may know about its run. ``lease_id`` fences its side effects: a write
    that names it in the same statement as the job's row cannot land after the lease is lost."""

    job_id: uuid.UUID
    tenant: str
    type: str
    attempt: int
    max_attempts: int
    lease_id: uuid.UUID
    #: Where ``progress`` goes (the worker running the job sets it).
    reporter: Callable[[Progress], None] | None = field(default=None, repr=False, compare=False)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Say how far the job is (``0.0``..``1.0``, and what it is doing): shown with the job
        while it runs. Cheap to call often: the worker writes the latest about once a second."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, not {fraction}")
        if self.reporter is not None:
            self.reporter(Progress(fraction, (message or "")[:200]))


@dataclass(frozen=True, slots=True)
class Progress:
    fraction: float
    message: str = ""


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a job of this type gets when its submitter leaves it out (``None``: the queue's),
    applied by the API when it runs with ``JOBQ_STRICT_TYPES``."""

    queue: str | None = None
    max_attempts: int | None = None
    timeout: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None

    def as_fields(self) -> dict[str, Any]:
        """As the job fields they fill (only those set)."""
        fields = {
            "queue": self.queue, "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout, "retry_backoff_seconds": self.retry_backoff,
            "retry_backoff_max_seconds": self.retry_backoff_max,
        }  # fmt: skip
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Handler:
    """A job type's handler, as ``@handler`` declared it."""

    name: str
    func: Callable[..., Any]
    payload_type: Any
    wants_context: bool
    is_async: bool
    defaults: Defaults = field(default_factory=Defaults)

    def schema(self) -> dict[str, Any]:
        """The payload's JSON Schema, from the annotation (``{}``: anything goes, also for an
        annotation msgspec cannot describe, such as ``object`` or a class of your own)."""
        if self.payload_type in (Any, object):
            return {}
        try:
            return msgspec.json.schema(self.payload_type)
        except TypeError:
            return {}

    def described(self) -> dict[str, Any]:
        """What a worker registers of its type: name, payload JSON Schema and defaults."""
        return {"name": self.name, "schema": self.schema(), "defaults": self.defaults.as_fields()}

    async def __call__(self, payload: Any, ctx: JobContext) -> Any:
        """Run it: the payload converted, a sync function in a thread."""
        try:
            value = msgspec.convert(payload, self.payload_type)
        except msgspec.ValidationError as exc:
            raise InvalidPayload(f"invalid payload for {self.name}: {exc}") from None
        args = (value, ctx) if self.wants_context else (value,)
        if self.is_async:
            return await self.func(*args)
        return await asyncio.to_thread(self.func, *args)

    @classmethod
    def of(cls, func: Callable[..., Any], name: str, defaults: Defaults | None = None) -> Handler:
        params = list(inspect.signature(func).parameters.values())
        if not params or len(params) > 2:
            raise TypeError(f"handler {name!r} must take (payload) or (payload, context)")
        hints = get_type_hints(func)
        return cls(
            name=name,
            func=func,
            payload_type=hints.get(params[0].name, Any),
            wants_context=len(params) == 2,
            is_async=inspect.iscoroutinefunction(func),
            defaults=defaults or Defaults(),
        )


@overload
def handler(name: F, /) -> F: ...
@overload
def handler(
    name: str | None = None,
    /,
    *,
    queue: str | None = None,
    max_attempts: int | None = None,
    timeout: int | None = None,
    retry_backoff: float | None = None,
    retry_backoff_max: float | None = None,
) -> Callable[[F], F]: ...
def handler(
    name: str | Callable[..., Any] | None = None,
    /,
    *,
    queue: str | None = None,
    max_attempts: int | None = None,
    timeout: int | None = None,
    retry_backoff: float | None = None,
    retry_backoff_max: float | None = None,
) -> Any:
    """Mark a function as the handler of job type ``name`` (by default the function's
    ``module.qualname``): ``@handler("images.resize")``, or bare ``@handler``. The keywords
    are the type's defaults: what its jobs get when the submitter leaves them out (applied by
    an API running with ``JOBQ_STRICT_TYPES``)."""
    defaults = Defaults(queue, max_attempts, timeout, retry_backoff, retry_backoff_max)

    def mark(func: F) -> F:
        type_name = name if isinstance(name, str) else f"{func.__module__}.{func.__qualname__}"
        setattr(func, MARK, Handler.of(func, type_name, defaults))
        return func

    return mark(name) if callable(name) else mark


def marked(func: Callable[..., Any] | Handler) -> Handler:
    """The ``Handler`` that ``@handler`` left on ``func`` (``TypeError`` if it is unmarked)."""
    h = func if isinstance(func, Handler) else getattr(func, MARK, None)
    if not isinstance(h, Handler):
        raise TypeError(f"{func!r} is not marked with @jobq.handler")
    return h


def handlers_in(module: ModuleType) -> list[Handler]:
    """The handlers a module declares (its own and those it imported by name)."""
    found = (getattr(value, MARK, None) for value in vars(module).values())
    return [h for h in found if isinstance(h, Handler)]


class HandlerModuleError(Exception):
    """A handler module cannot be used; the message is one line that names it."""


def load(modules: Iterable[str]) -> list[Handler]:
    """The handlers of ``modules``, imported with the working directory on the path (where a
    worker runs in the user's project). Raises ``HandlerModuleError`` for a module that cannot
    be imported, declares no handler, or gives a job type a second handler."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    by_name: dict[str, Handler] = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise HandlerModuleError(
                f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}"
            ) from None
        found = handlers_in(module)
        if not found:
            raise HandlerModuleError(f"module {name!r} declares no handler (use @jobq.handler)")
        for h in found:
            add(by_name, h)
    return list(by_name.values())


def add(by_name: dict[str, Handler], handler: Handler) -> None:
    """Add ``handler`` under its type's name; ``HandlerModuleError`` if another function
    already handles that type."""
    known = by_name.get(handler.name)
    if known is not None and known.func is not handler.func:
        raise HandlerModuleError(
            f"job type {handler.name!r} has two handlers: {_where(known)} and {_where(handler)}"
        )
    by_name[handler.name] = handler


def _where(handler: Handler) -> str:
    return f"{handler.func.__module__}.{handler.func.__qualname__}"
