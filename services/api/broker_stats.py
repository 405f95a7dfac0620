"""RabbitMQ's figures for every job queue, from one management API call shared by all requests.

Asking the broker per queue per request would let callers multiply the API's load on RabbitMQ
(one call per queue, for every ``GET /v1/queues``); here one call lists every job queue of
this deployment, and its answer serves every request for ``ttl`` seconds, concurrent requests
waiting for the same call. When the management API cannot be reached, the figures are empty
(the answer says ``null``) for the same ``ttl``, so a dead console is not asked per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import msgspec

from shared.messaging import Topology

log = logging.getLogger("jobq.api")

#: Queues per management API page, and pages read at most (declared queues are few).
PAGE_SIZE = 500
MAX_PAGES = 20


class BrokerFigures(msgspec.Struct):
    """A job queue as RabbitMQ counts it, across every tenant."""

    ready: int
    unacked: int
    consumers: int


class _Page(msgspec.Struct):
    items: list[dict[str, Any]]
    page_count: int = 1


class BrokerStats:
    """``figures()`` of every job queue, at most ``ttl`` seconds old."""

    def __init__(
        self,
        management_url: str,
        amqp_url: str,
        topology: Topology,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topology = topology
        self.ttl = ttl
        self.clock = clock
        self._client: httpx.AsyncClient | None = None
        if management_url:
            url = urlsplit(management_url)
            self._client = httpx.AsyncClient(
                base_url=f"{url.scheme}://{url.hostname}:{url.port or 15672}",
                auth=(url.username or "guest", url.password or "guest"),
                timeout=2.0,
            )
        self._vhost = quote(unquote(urlsplit(amqp_url).path.lstrip("/")) or "/", safe="")
        self._figures: dict[str, BrokerFigures] = {}
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def figures(self) -> dict[str, BrokerFigures]:
        """``{job queue name: figures}``; empty if the management API is not configured or
        not reachable."""
        if self._client is None:
            return {}
        if self.clock() - self._at < self.ttl:
            return self._figures
        async with self._lock:
            if self.clock() - self._at >= self.ttl:  # not refreshed while this call waited
                self._figures = await self._fetch(self._client)
                self._at = self.clock()
        return self._figures

    async def _fetch(self, client: httpx.AsyncClient) -> dict[str, BrokerFigures]:
        prefix = self.topology.queue_name("")
        params = {
            "columns": "name,messages_ready,messages_unacknowledged,consumers",
            "name": f"^{re.escape(prefix)}",
            "use_regex": "true",
            "page_size": str(PAGE_SIZE),
        }
        out: dict[str, BrokerFigures] = {}
        try:
            page, pages = 1, 1
            while page <= min(pages, MAX_PAGES):
                r = await client.get(f"/api/queues/{self._vhost}", params={**params, "page": page})
                r.raise_for_status()
                answer = msgspec.json.decode(r.content, type=_Page)
                for q in answer.items:
                    out[q["name"].removeprefix(prefix)] = BrokerFigures(
                        int(q.get("messages_ready") or 0),
                        int(q.get("messages_unacknowledged") or 0),
                        int(q.get("consumers") or 0),
                    )
                page, pages = page + 1, answer.page_count
        except (httpx.HTTPError, msgspec.MsgspecError, KeyError, TypeError, ValueError) as exc:
            log.info("management API unavailable", extra={"error": repr(exc)})
            return {}
        return out

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
