"""Handlers: ``@handler("name")`` on an async or sync function taking a typed payload.

The payload is converted to the first parameter's annotation with msgspec (a Struct, dataclass,
TypedDict, ``dict`` or ``Any``); a payload that does not fit is a permanent failure. A handler
that declares a second parameter receives the ``JobContext`` (its fencing token included).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import msgspec

from shared.errors import InvalidPayload, UnknownJobType


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may know about its run; ``lease_id`` fences its side effects."""

    job_id: uuid.UUID
    tenant: str
    type: str
    attempt: int
    max_attempts: int
    lease_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    func: Callable[..., Any]
    payload_type: Any
    wants_context: bool
    is_async: bool

    async def __call__(self, payload: Any, ctx: JobContext) -> Any:
        try:
            value = msgspec.convert(payload, self.payload_type)
        except msgspec.ValidationError as exc:
            raise InvalidPayload(f"invalid payload for {self.name}: {exc}") from None
        args = (value, ctx) if self.wants_context else (value,)
        if self.is_async:
            return await self.func(*args)
        return await asyncio.to_thread(self.func, *args)


class Registry:
    """Job type -> handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def handler(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the handler of job type ``name``."""

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            params = list(inspect.signature(func).parameters.values())
            if not params or len(params) > 2:
                raise TypeError(f"handler {name!r} must take (payload) or (payload, context)")
            hints = get_type_hints(func)
            self._handlers[name] = Handler(
                name=name,
                func=func,
                payload_type=hints.get(params[0].name, Any),
                wants_context=len(params) == 2,
                is_async=inspect.iscoroutinefunction(func),
            )
            return func

        return register

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            raise UnknownJobType(f"no handler registered for job type {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def load_modules(self, modules: list[str]) -> None:
        """Import user modules (``JOBQ_HANDLERS``); their ``@handler`` calls land here."""
        for module in modules:
            importlib.import_module(module)


#: The registry ``@handler`` writes to: user modules import it, the worker reads it.
registry = Registry()
handler = registry.handler
