"""One attempt: run a handler under its timeout and say what came of it. No jobq I/O here, so
every way an attempt can end is testable without services."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from jobq import PermanentError

from shared.errors import PermanentFailure


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The handler returned; ``result`` is its value as JSON text."""

    result: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The handler raised, timed out, or returned something that cannot be stored."""

    error: BaseException

    @property
    def permanent(self) -> bool:
        """Running again cannot help (no retries left to spend on it)."""
        return isinstance(self.error, PermanentError)


Outcome = Succeeded | Failed


async def attempt(run: Callable[[], Awaitable[Any]], timeout_seconds: float) -> Outcome:
    """Run ``run()`` (the handler on its payload) for at most ``timeout_seconds``.

    A cancellation is not an outcome: it propagates, and whoever cancelled knows why.
    """
    try:
        async with asyncio.timeout(timeout_seconds):
            result = await run()
    except TimeoutError:
        return Failed(TimeoutError(f"attempt exceeded timeout_seconds={timeout_seconds:g}"))
    except Exception as exc:
        return Failed(exc)
    return stored(result)


def stored(result: Any) -> Outcome:
    """A handler's return value as the JSON the job row keeps, or why it cannot be kept."""
    try:
        text = msgspec.json.encode(result).decode()
    except (TypeError, ValueError, msgspec.EncodeError) as exc:  # lone surrogates: ValueError
        return Failed(PermanentFailure(f"result is not JSON: {exc}"))
    if "\\u0000" in text:  # PostgreSQL's jsonb refuses NUL
        return Failed(PermanentFailure("result holds a NUL character (\\u0000)"))
    return Succeeded(text)
