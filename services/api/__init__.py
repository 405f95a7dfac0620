"""The HTTP API service (Litestar)."""
