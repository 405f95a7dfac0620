"""The job types this application runs: ``jobq worker --handlers myapp.jobs``."""

from __future__ import annotations

import msgspec
from jobq import JobContext, PermanentError, handler


class Thumbnail(msgspec.Struct):
    image: str
    width: int = 128


@handler("myapp.thumbnail")
async def thumbnail(payload: Thumbnail, ctx: JobContext) -> dict[str, object]:
    """Async, with a typed payload and the job's context."""
    if payload.width <= 0:
        raise PermanentError(f"width must be positive, not {payload.width}")
    return {"thumbnail": f"{payload.image}@{payload.width}px", "attempt": ctx.attempt}


@handler("myapp.welcome")
def welcome(payload: dict[str, str]) -> str:
    """Sync (run in a thread), with a plain dict payload."""
    return f"Welcome, {payload['name']}!"
