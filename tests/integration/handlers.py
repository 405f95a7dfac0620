"""Handlers the integration tests register: they record every execution in process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

from jobq import JobContext, handler

executions: Counter[uuid.UUID] = Counter()


@handler("test.record")
async def record(payload: Any, ctx: JobContext) -> dict[str, int]:
    executions[ctx.job_id] += 1
    await asyncio.sleep(float((payload or {}).get("sleep", 0)))
    return {"attempt": ctx.attempt}


@handler("test.progress")
def progress(payload: dict[str, Any], ctx: JobContext) -> str:
    """Sync (a thread): reports progress, then waits as long as the payload says."""
    ctx.progress(0.25, "warming up")
    ctx.progress(0.5, "half way")
    time.sleep(float(payload["sleep"]))
    return "done"
