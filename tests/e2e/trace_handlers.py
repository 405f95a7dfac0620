"""Handlers of the trace test (``JOBQ_HANDLERS=tests.e2e.trace_handlers``)."""

from __future__ import annotations

from typing import Any

from jobq import JobContext, handler


@handler("traced.flaky")
async def flaky(payload: Any, ctx: JobContext) -> dict[str, int]:
    """Fails its first attempt, so its job is retried once."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}
