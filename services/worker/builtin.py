"""Built-in handlers for testing and benchmarking: ``noop``, ``sleep``, ``echo``, ``fail``."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from jobq import handler

from shared.errors import PermanentFailure


class SleepPayload(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = 1.0


class FailPayload(msgspec.Struct, forbid_unknown_fields=True):
    message: str = "failed on purpose"
    permanent: bool = False


class HandlerError(Exception):
    """A (retryable) failure raised by the ``fail`` handler."""


@handler("noop")
async def noop(payload: Any) -> None:
    """Does nothing: the benchmark's job."""


@handler("sleep")
async def sleep(payload: SleepPayload) -> dict[str, float]:
    await asyncio.sleep(payload.seconds)
    return {"slept": payload.seconds}


@handler("echo")
async def echo(payload: Any) -> Any:
    return payload


@handler("fail")
async def fail(payload: FailPayload) -> None:
    if payload.permanent:
        raise PermanentFailure(payload.message)
    raise HandlerError(payload.message)
