"""The webhook handler end to end against local HTTP servers on 127.0.0.x (no PostgreSQL or
RabbitMQ needed): refused destinations are never connected to, allowed ones get the request."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.worker.webhook import (
    RefusedDestination,
    WebhookError,
    WebhookPayload,
    WebhookPolicy,
    deliver,
    resolve_host,
)
from shared.errors import PermanentFailure


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


#: Writes the response (it may take its time).
Respond = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """A minimal HTTP/1.1 server that counts connections (not just requests)."""

    respond: Respond
    host: str = ""
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if h)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            await self.respond(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up: what some tests want
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    respond: Respond, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(respond)
    listener = await asyncio.start_server(server.handle, host, port, ssl=tls)
    server.host, server.port = listener.sockets[0].getsockname()[:2]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
        for task in server.tasks:
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)


def reply(status: int, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer(status: int, body: bytes = b"", **headers: str) -> Respond:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(status, body, **headers))

    return respond


def allowing(*cidrs: str, **limits: Any) -> WebhookPolicy:
    return WebhookPolicy(allow_networks=tuple(ip_network(c) for c in cidrs), **limits)


def payload(url: str, **fields: Any) -> WebhookPayload:
    """As the worker builds it from a job's JSON payload."""
    return msgspec.convert({"url": url, **fields}, WebhookPayload)


#: The worker's TLS context, built once as ``webhook_handler`` does.
TLS = httpx.create_ssl_context(trust_env=False)


async def send(
    payload: WebhookPayload,
    policy: WebhookPolicy,
    resolve: Callable[[str], Awaitable[list[str]]] = resolve_host,
    tls: ssl.SSLContext = TLS,
) -> dict[str, Any]:
    return await deliver(payload, policy, tls, resolve)


def resolver(*answers: list[str]) -> tuple[Callable[[str], Awaitable[list[str]]], list[str]]:
    """A fake DNS: the n-th lookup gets the n-th answer (the last one from then on)."""
    asked: list[str] = []

    async def resolve(host: str) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    return resolve, asked


# -- refused destinations get nothing -------------------------------------------------------


async def test_loopback_is_refused_and_never_connected_to() -> None:
    async with serving(answer(200)) as server:
        with pytest.raises(RefusedDestination, match=r"127\.0\.0\.1: loopback address"):
            await send(payload(server.url()), WebhookPolicy())
    assert server.connections == 0


async def test_an_allow_listed_address_gets_the_request() -> None:
    async with serving(answer(201, b'{"ok": true}', Content_Type="application/json")) as server:
        result = await send(
            payload(server.url("/hook?x=1"), body={"n": 1}, headers={"X-Signature": "s"}),
            allowing("127.0.0.1/32"),
        )
    assert result == {"status": 201, "body": {"ok": True}}
    [request] = server.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook?x=1", b'{"n":1}')
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-signature"] == "s"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"


async def test_a_text_answer_comes_back_as_text_and_no_body_is_sent_unless_given() -> None:
    async with serving(answer(200, b"fine\x00", Content_Type="text/plain")) as server:
        result = await send(payload(server.url(), method="DELETE"), allowing("127.0.0.1/32"))
    assert result == {"status": 200, "body": "fine\ufffd"}
    assert server.requests[0].body == b""
    assert "content-type" not in server.requests[0].headers


async def test_json_holding_a_nul_comes_back_as_text() -> None:
    """PostgreSQL's jsonb refuses NUL: as JSON, the job's result would not be storable."""
    body = b'{"a": "\\u0000"}'
    async with serving(answer(200, body, Content_Type="application/json")) as server:
        result = await send(payload(server.url()), allowing("127.0.0.1/32"))
    assert result == {"status": 200, "body": body.decode()}


async def test_a_redirect_to_a_refused_address_is_not_followed() -> None:
    async with serving(answer(200)) as target:
        redirect = answer(302, Location=target.url("/internal"))
        async with serving(redirect, host="127.0.0.2") as allowed:
            with pytest.raises(RefusedDestination, match=r"127\.0\.0\.1: loopback address"):
                await send(payload(allowed.url()), allowing("127.0.0.2/32"))
    assert len(allowed.requests) == 1
    assert target.connections == 0


@pytest.mark.parametrize(
    ("status", "method", "body"), [(307, "POST", b'{"n":1}'), (303, "GET", b""), (302, "GET", b"")]
)
async def test_redirects_are_followed_by_hand(status: int, method: str, body: bytes) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.path == "/start":
            writer.write(reply(status, Location="/next"))
        else:
            writer.write(reply(200, b"done"))

    async with serving(respond, host="127.0.0.2") as server:
        result = await send(payload(server.url("/start"), body={"n": 1}), allowing("127.0.0.2/32"))
    assert result == {"status": 200, "body": "done"}
    _, second = server.requests
    assert (second.method, second.path, second.body) == (method, "/next", body)


async def test_payload_headers_do_not_follow_a_redirect_to_another_origin() -> None:
    async with serving(answer(200)) as other:
        redirect = answer(307, Location=f"http://127.0.0.3:{other.port}/")
        async with (
            serving(redirect, host="127.0.0.2") as first,
            serving(answer(200), host="127.0.0.3", port=other.port) as second,
        ):
            await send(
                payload(first.url(), headers={"Authorization": "Bearer secret"}),
                allowing("127.0.0.2/32", "127.0.0.3/32"),
            )
    assert first.requests[0].headers["authorization"] == "Bearer secret"
    [request] = second.requests
    assert "authorization" not in request.headers
    assert request.headers["host"] == f"127.0.0.3:{other.port}"


async def test_redirects_stop_at_the_limit() -> None:
    async with serving(answer(302, Location="/again"), host="127.0.0.2") as server:
        with pytest.raises(PermanentFailure, match="more than 2 redirects"):
            await send(payload(server.url()), allowing("127.0.0.2/32", max_redirects=2))
    assert len(server.requests) == 3


# -- limits ---------------------------------------------------------------------------------


async def test_a_slow_server_fails_the_attempt_at_the_timeout() -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with serving(slow) as server:
        started = time.monotonic()
        with pytest.raises(WebhookError, match=r"within 0\.5s"):
            await send(payload(server.url()), allowing("127.0.0.1/32", timeout_seconds=0.5))
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5
    assert len(server.requests) == 1


async def test_the_timeout_covers_a_body_that_trickles_in() -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(200, b"x" * 100)[:-100])
        for _ in range(100):  # a byte every 0.1 s: no single read waits long
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"x")

    async with serving(trickle) as server:
        started = time.monotonic()
        with pytest.raises(WebhookError, match=r"within 0\.5s"):
            await send(payload(server.url()), allowing("127.0.0.1/32", timeout_seconds=0.5))
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(("size", "ok"), [(1000, True), (1001, False), (20_000_000, False)])
async def test_responses_over_the_cap_fail_the_attempt(size: int, ok: bool) -> None:
    async with serving(answer(200, b"x" * size)) as server:
        call = send(payload(server.url()), allowing("127.0.0.1/32", max_response_bytes=1000))
        if ok:
            assert (await call)["body"] == "x" * size
        else:
            with pytest.raises(PermanentFailure, match="exceeds 1000 bytes"):
                await call


async def test_a_compressed_answer_is_refused_unread() -> None:
    """Asked for identity, a server that compresses anyway could make a small answer expand
    past the cap in memory: it is refused before a byte is decoded."""
    bomb = gzip.compress(b"\0" * 5_000_000)
    async with serving(answer(200, bomb, Content_Encoding="gzip")) as server:
        with pytest.raises(PermanentFailure, match="'gzip'-encoded"):
            await send(payload(server.url()), allowing("127.0.0.1/32"))
        assert server.requests[0].headers["accept-encoding"] == "identity"


# -- outcomes -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    async with serving(answer(status, b"busy")) as server:
        with pytest.raises(WebhookError, match=f"HTTP {status}: busy") as caught:
            await send(payload(server.url()), allowing("127.0.0.1/32"))
    assert not isinstance(caught.value, PermanentFailure)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 304])
async def test_other_answers_are_permanent_failures(status: int) -> None:
    async with serving(answer(status)) as server:
        with pytest.raises(PermanentFailure, match=f"HTTP {status}"):
            await send(payload(server.url()), allowing("127.0.0.1/32"))


async def test_a_refused_connection_is_retryable() -> None:
    async with serving(answer(200)) as server:
        url = server.url()
    with pytest.raises(WebhookError, match="ConnectError"):
        await send(payload(url), allowing("127.0.0.1/32"))


# -- the connection goes to the address that was checked ------------------------------------


async def test_the_connection_goes_to_the_checked_address_not_a_new_lookup() -> None:
    """``localhost`` resolves to 127.0.0.1 for the system; the handler's resolver says
    127.0.0.2 (allowed) once, then 127.0.0.1 (a rebinding). Only 127.0.0.2 may see a request."""
    async with (
        serving(answer(200), host="127.0.0.2") as checked,
        serving(answer(200), port=checked.port) as rebound,
    ):
        resolve, asked = resolver(["127.0.0.2"], ["127.0.0.1"])
        result = await send(
            payload(f"http://localhost:{checked.port}/"), allowing("127.0.0.2/32"), resolve
        )
    assert result["status"] == 200
    assert asked == ["localhost"]
    assert checked.requests[0].headers["host"] == f"localhost:{checked.port}"
    assert rebound.connections == 0


async def test_one_refused_answer_refuses_the_host() -> None:
    async with serving(answer(200), host="127.0.0.2") as server:
        resolve, _ = resolver(["127.0.0.2", "10.0.0.1"])
        with pytest.raises(RefusedDestination, match=r"hooks\.example \(10\.0\.0\.1\): private"):
            await send(
                payload(f"http://hooks.example:{server.port}/"), allowing("127.0.0.2/32"), resolve
            )
    assert server.connections == 0


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a server certificate for ``hooks.example`` only (no IP address in it)."""
    now = dt.datetime.now(dt.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: Any
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("jobq test CA", ca_key, None, ca_key)
    leaf = certificate("hooks.example", key, ca.subject, ca_key)
    folder = tmp_path_factory.mktemp("pki")
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "server.pem", folder / "server.key")
    return Pki(folder / "ca.pem", server)


@pytest.mark.parametrize(("host", "ok"), [("hooks.example", True), ("other.example", False)])
async def test_tls_verifies_the_certificate_against_the_url_host(
    pki: Pki, host: str, ok: bool
) -> None:
    """Connected to 127.0.0.2, the handler still sends the name as SNI and checks the
    certificate against it: one for ``hooks.example`` passes, not for ``other.example``."""
    tls = httpx.create_ssl_context(trust_env=False)
    tls.load_verify_locations(pki.ca_file)
    async with serving(answer(200, b"tls"), host="127.0.0.2", tls=pki.server) as server:
        resolve, _ = resolver(["127.0.0.2"])
        call = send(
            payload(f"https://{host}:{server.port}/"), allowing("127.0.0.2/32"), resolve, tls
        )
        if ok:
            assert await call == {"status": 200, "body": "tls"}
            assert server.requests[0].headers["host"] == f"hooks.example:{server.port}"
        else:
            with pytest.raises(WebhookError, match="Hostname mismatch"):
                await call
            assert server.requests == []
