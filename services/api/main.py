"""Runs the API under uvicorn."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from shared.config import Settings


def main(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        # Longer than common clients' idle expiry (httpx: 5 s), so a client never sends on a
        # connection the server is closing.
        timeout_keep_alive=30,
    )
