"""A handler that blocks its worker's event loop (``JOBQ_HANDLERS=tests.e2e.stuck_handlers``):
the liveness test's stuck loop."""

from __future__ import annotations

import time
from typing import Any

from jobq import handler


@handler("stuck.block")
async def block(payload: Any) -> None:
    """Sleeps without awaiting: nothing else in the process runs meanwhile."""
    time.sleep(float(payload))  # noqa: ASYNC251 (blocking the loop is the point)
