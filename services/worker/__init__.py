"""The worker service: consumes tickets, claims jobs in PostgreSQL, runs their handlers."""

from services.worker.registry import JobContext, handler

__all__ = ["JobContext", "handler"]
