"""Handlers of the dashboard's browser test (``JOBQ_HANDLERS=tests.e2e.dashboard_handlers``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jobq import JobContext, handler


@handler("ui.flaky")
async def flaky(payload: dict[str, Any], ctx: JobContext) -> dict[str, str]:
    """Fails until the file ``payload["fixed"]`` exists (its upstream is "down"): a job that
    goes dead, and succeeds when replayed after the fix."""
    if not await asyncio.to_thread(Path(payload["fixed"]).exists):
        raise RuntimeError("upstream unavailable: connection refused")
    ctx.progress(1.0, "upstream answered")
    return {"upstream": "ok"}
