"""The worker service: consumes tickets, claims jobs in PostgreSQL, runs their handlers.

Handlers are declared with ``jobq.handler`` (the SDK, ``sdk/python``)."""
