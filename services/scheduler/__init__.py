"""The scheduler service: due jobs, retries, expired leases and lost publishes."""
