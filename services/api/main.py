"""Runs the API under uvicorn."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.server import server_config
from shared.config import Settings


def main(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    uvicorn.Server(server_config(settings, create_app(settings), host, port)).run()
