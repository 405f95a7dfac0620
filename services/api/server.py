"""The API's HTTP server: uvicorn with httptools, with deadlines and a head-size cap for clients.

uvicorn's ``HttpToolsProtocol`` (0.54) arms its keep-alive timer only once a response is
complete, and any byte received cancels it; it bounds neither how long a request head or body
may take to arrive nor how large a head may be. A client that connected and sent nothing, or
sent a request a byte at a time, held its connection forever. ``GuardedProtocol`` gives every
connection one deadline for the phase it is in, and caps the request head. It builds on
uvicorn's internals (the version is pinned in requirements.lock); ``test_http_limits.py``
fails if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shared.config import Settings


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """How long a client may take over each part of a request, and how large its head may be."""

    idle_timeout: float
    header_timeout: float
    body_timeout: float
    max_header_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            idle_timeout=settings.http_idle_timeout_seconds,
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            max_header_bytes=settings.http_max_header_bytes,
        )


#: How soon a deadline that passed while uvicorn was not reading is looked at again.
PAUSED_GRACE_SECONDS = 1.0


class Phase(enum.Enum):
    """Where a connection is in its current request."""

    #: No request in progress (just connected, or every answer given): closed at the deadline.
    IDLE = enum.auto()
    #: A request line and headers arriving: ``408`` at the deadline.
    HEAD = enum.auto()
    #: A request body arriving: ``408`` at the deadline (just closed if the answer has begun).
    BODY = enum.auto()
    #: The app is answering: no deadline here (a long-poll may take a minute).
    BUSY = enum.auto()


class HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request head already answered."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline per phase and a cap on the request head.

    uvicorn's own keep-alive timer is replaced by the ``IDLE`` deadline, which bytes that start
    no request (blank lines, the rest of a body already answered) do not put off. A deadline that
    passes while uvicorn has stopped reading (a pipelined request waits its turn, or the app has
    not taken the body received so far) is looked at again a second later, until reading goes
    on: that delay is not the client's.
    """

    limits: ClassVar[HttpLimits]

    _phase = Phase.IDLE
    _deadline: asyncio.TimerHandle | None = None
    # Two lower bounds of the current head's size, as the parser reports a header only once it
    # is whole: the URL and headers reported, and the reads after its first while it was
    # incomplete. One endless header is bounded by the second.
    _head_reported = 0
    _head_read = 0
    _head_began = False  # the current head began in the read being parsed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter(Phase.IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_began = False
        super().data_received(data)
        if self._phase is Phase.HEAD and not self._head_began and not self.transport.is_closing():
            self._head_read += len(data)
            if self._head_too_large():
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():  # else the parser error is our answered refusal
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_reported = self._head_read = 0
        self._head_began = True
        self._enter(Phase.HEAD)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_reported += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_reported += len(name) + len(value)

    def on_headers_complete(self) -> None:
        if self._head_too_large():
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            raise HeadRefused  # before uvicorn hands the request to the app
        super().on_headers_complete()
        self._enter(Phase.BODY)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._enter(Phase.IDLE if self.cycle.response_complete else Phase.BUSY)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._unset_keepalive_if_required()  # uvicorn's keep-alive timer, just armed
        # ``self.cycle`` is the last request read: once it is answered, all are.
        if self._phase is Phase.BUSY and self.cycle.response_complete:
            self._enter(Phase.IDLE)

    def _head_too_large(self) -> bool:
        return max(self._head_reported, self._head_read) > self.limits.max_header_bytes

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        self._disarm()
        timeout = {
            Phase.IDLE: self.limits.idle_timeout,
            Phase.HEAD: self.limits.header_timeout,
            Phase.BODY: self.limits.body_timeout,
        }.get(phase)
        if timeout is not None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.flow.read_paused:
            # Not the client's delay: look again shortly. A fresh full deadline instead would
            # let a client that keeps the buffer full at each deadline stretch it for ever.
            self._deadline = self.loop.call_later(PAUSED_GRACE_SECONDS, self._expire)
        elif self._phase is Phase.IDLE:
            self._close()
        else:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT)

    def _refuse(self, status: HTTPStatus) -> None:
        """Close the connection, answering ``status`` first unless an answer (to this request
        or an earlier one) is already under way."""
        if self._phase is Phase.BODY:
            answering = bool(self.pipeline) or self.cycle.response_started
            # As if the client had gone: the app reads no more of the body and answers nobody.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        else:
            answering = self.cycle is not None and not self.cycle.response_complete
        if not answering:
            self.transport.write(_answer(status, self.server_state.default_headers))
        self._close()

    def _close(self) -> None:
        self._disarm()
        if self.transport.get_write_buffer_size():
            # The client is not reading: close() would wait for it to, and the kernel would
            # keep sending what it holds. A reset drops both.
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()


_DETAIL = {
    HTTPStatus.REQUEST_TIMEOUT: "the request did not arrive in time",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "the request line and headers are too large",
}


def _answer(status: HTTPStatus, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole response that closes the connection, its body a problem like the API's."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": status.phrase,
            "status": status.value,
            "detail": _DETAIL[status],
        }
    ).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            *(name + b": " + value + b"\r\n" for name, value in default_headers),
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def protocol_class(http_limits: HttpLimits) -> type[GuardedProtocol]:
    """``GuardedProtocol`` bound to ``http_limits`` (uvicorn builds each connection's protocol
    from a class and its own config)."""

    class Bound(GuardedProtocol):
        limits = http_limits

    return Bound


def server_config(
    settings: Settings,
    app: Callable[..., Awaitable[None]],
    host: str | None = None,
    port: int | None = None,
) -> uvicorn.Config:
    """How the API is served: ``jobq api`` and the tests that attack the server both use this.

    ``ws="none"``: the API has no WebSocket route, and an upgraded connection would leave
    ``GuardedProtocol``. No ``limit_concurrency``: uvicorn counts open connections towards it,
    so a few hundred idle or slow ones would turn every other client's request into a ``503``,
    and it refuses no connection (each still holds a descriptor); the deadlines bound how long
    any connection is held instead.
    """
    return uvicorn.Config(
        app,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=protocol_class(HttpLimits.of(settings)),
        ws="none",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
