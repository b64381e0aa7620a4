"""Forwarding through a real gateway: routing, header hygiene, streaming, failures.

Every test runs the real gateway on port 0 with real TLS in front of a real
upstream.  Where an HTTP client would tidy the request (paths, framing,
HTTP/1.0), the request line is written by hand over a TLS socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    echoed_headers,
    free_port,
    name_secret,
    registry_client,
)
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"
MTLS_CLIENT = registry_client("mtls.client", name_secret(CLIENT_DN))
MiB = 1 << 20
GiB = 1 << 30
StartUpstream = Callable[[web.Application], Awaitable[Upstream]]


# --- a raw HTTP/1.x client over TLS -------------------------------------------------


@dataclass
class RawResponse:
    version: str
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One TLS connection on which requests are written byte for byte.

    aiohttp and yarl normalise paths and always speak HTTP/1.1; these tests
    need the caller's exact bytes and must know that two requests shared one
    connection.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, gw: GatewayUnderTest, client: Issued | None) -> RawConnection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, ssl=gw.ssl_context(client), server_hostname="localhost"
        )
        return cls(reader, writer)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        obj = self.writer.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        return obj

    async def send(self, head: str, body: bytes = b"") -> None:
        self.writer.write(head.encode("latin-1") + body)
        await self.writer.drain()

    async def read_response(self, *, timeout: float = 10.0) -> RawResponse:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            version, status, *_ = lines[0].split(" ", 2)
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                if line:
                    key, _, value = line.partition(":")
                    headers.add(key.strip(), value.strip())
            if "Content-Length" in headers:
                body = await self.reader.readexactly(int(headers["Content-Length"]))
            elif headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = await self._read_chunked()
            else:
                body = await self.reader.read()  # close-delimited (RFC 9112 §6.3)
        return RawResponse(version, int(status), headers, body)

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers from the gateway
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def request(self, head: str, body: bytes = b"") -> RawResponse:
        await self.send(head, body)
        return await self.read_response()

    async def at_eof(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


def get(path: str, *extra: str, version: str = "HTTP/1.1") -> str:
    lines = [f"GET {path} {version}", "Host: localhost", *extra]
    return "\r\n".join(lines) + "\r\n\r\n"


# --- helpers ----------------------------------------------------------------------


def rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} missing from /proc/self/status")


class PeakRss:
    """How far this process's resident memory rose during a block.

    Gateway, client and upstream share this process, so the growth bounds what
    the gateway buffered.  The kernel's high-water mark is reset first (write
    "5" to clear_refs) so that earlier tests' peaks don't hide this one; the
    sampler covers kernels where the reset is not allowed.
    """

    def __init__(self) -> None:
        self.baseline = 0
        self.sampled_peak = 0
        self.hwm_reset = False
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.sampled_peak = max(self.sampled_peak, rss_bytes())
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> PeakRss:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            pass
        self.baseline = rss_bytes()
        self.sampled_peak = self.baseline
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sampled_peak = max(self.sampled_peak, rss_bytes())

    @property
    def growth(self) -> int:
        peak = self.sampled_peak
        if self.hwm_reset:
            peak = max(peak, rss_bytes("VmHWM"))
        return peak - self.baseline


@pytest.fixture
async def start_raw_upstream() -> AsyncIterator[StartUpstream]:
    """An upstream whose server leaves Content-Encoding alone, to see the exact bytes."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> Upstream:
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return Upstream(f"http://127.0.0.1:{port}", port)

    yield start
    for runner in runners:
        await runner.cleanup()


def route(prefix: str, upstream: str, auth: str = "client", **more: Any) -> dict[str, Any]:
    return {"prefix": prefix, "upstream": upstream, "auth": auth, **more}


# --- identity and hop-by-hop headers ------------------------------------------------

SPOOF = "spoofed-by-caller"
SPOOFED_HEADERS = [
    ("X-Client-Id", SPOOF),
    ("x-client-id", SPOOF),
    ("X_Client_Id", SPOOF),
    ("X-CLIENT-ID", SPOOF),
    ("X-Client-Cert-Subject", SPOOF),
    ("X_Client_Cert_Subject", SPOOF),
    ("X-Client-Cert-Thumbprint", SPOOF),
    ("X-Client-Cert-Sha256", SPOOF),
    ("X-Forwarded-Client-Cert", SPOOF),
    ("x_forwarded_client_cert", SPOOF),
    ("Client-Cert", SPOOF),
    ("X-Forwarded-For", SPOOF),
    ("X-Forwarded-Proto", SPOOF),
    ("X-Forwarded-Host", SPOOF),
    ("Forwarded", f"for={SPOOF}"),
]


@pytest.mark.parametrize("auth", ["client", "none"])
@pytest.mark.parametrize("listed_in_connection", [False, True])
async def test_spoofed_identity_headers_never_reach_upstream(
    make_gateway: MakeGateway,
    echo_upstream: Upstream,
    client_cert: Issued,
    auth: str,
    listed_in_connection: bool,
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", echo_upstream.url, auth)])
    headers = list(SPOOFED_HEADERS)
    if listed_in_connection:
        # Naming them hop-by-hop must not let them slip past the managed check,
        # nor remove the gateway's own copies.
        headers.append(("Connection", "keep-alive, X-Client-Id, X_Client_Id, X-Forwarded-For"))
    cert = client_cert if auth == "client" else None
    async with gw.session(cert) as session, session.get(gw.url + "/x", headers=headers) as r:
        assert r.status == 200
        body = await r.json()
    seen = echoed_headers(body)
    assert not [(k, v) for k, v in body["headers"] if SPOOF in v]
    assert not [k for k, _ in body["headers"] if "_" in k]
    if auth == "client":
        assert seen["x-client-id"] == ["mtls.client"]
        assert seen["x-client-cert-subject"] == [CLIENT_DN]
        assert seen["x-client-cert-thumbprint"] == [client_cert.thumbprint]
        assert len(seen["x-forwarded-client-cert"]) == 1
    else:
        for name in ("x-client-id", "x-client-cert-subject", "x-forwarded-client-cert"):
            assert name not in seen
    assert "client-cert" not in seen
    assert "forwarded" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == [f"localhost:{gw.port}"]


async def test_spoofed_headers_on_a_raw_request_are_stripped_too(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    # Written by hand so that nothing between the test and the gateway merges
    # or renames the repeated fields.
    gw = await make_gateway(clients=[MTLS_CLIENT])
    conn = await RawConnection.open(gw, client_cert)
    try:
        response = await conn.request(
            get(
                "/raw",
                f"X-Client-Id: {SPOOF}",
                f"x-client-id: {SPOOF}",
                f"X_Client_Id: {SPOOF}",
                f"X-CLIENT-ID: {SPOOF}",
                f"x_CLIENT-id: {SPOOF}",
            )
        )
    finally:
        await conn.close()
    assert response.status == 200
    assert echoed_headers(response.json())["x-client-id"] == ["mtls.client"]


async def test_hop_by_hop_headers_are_not_forwarded(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    headers = {
        "Connection": "keep-alive, X-Hop-Custom",
        "X-Hop-Custom": "hop",
        "Keep-Alive": "timeout=5, max=100",
        "TE": "trailers",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
    }
    async with gw.session(client_cert) as session, session.get(gw.url, headers=headers) as r:
        assert r.status == 200
        seen = echoed_headers(await r.json())
    for name in ("x-hop-custom", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert name not in seen, name
    # Whatever Connection the upstream hop carries is the gateway's own.
    assert "x-hop-custom" not in ",".join(seen.get("connection", [])).lower()
    assert seen["x-end-to-end"] == ["kept"]


@pytest.mark.parametrize(
    ("sent", "upstream_sees"),
    [
        ({"Accept": "text/html"}, ["text/html"]),
        ({}, ["*/*"]),  # as aiohttp's client added
        # Listed in Connection, the caller's Accept is hop-by-hop: the default takes its place.
        ({"Accept": "text/html", "Connection": "keep-alive, Accept"}, ["*/*"]),
    ],
)
async def test_the_upstream_gets_one_accept_the_callers_or_the_default(
    make_gateway: MakeGateway,
    client_cert: Issued,
    sent: dict[str, str],
    upstream_sees: list[str],
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    conn = await RawConnection.open(gw, client_cert)
    try:
        extra = [f"{name}: {value}" for name, value in sent.items()]
        response = await conn.request(get("/accept", *extra))
    finally:
        await conn.close()
    assert response.status == 200
    assert echoed_headers(response.json())["accept"] == upstream_sees


async def test_forwarded_headers_and_upstream_host_are_the_gateways(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    async with gw.session(client_cert) as session, session.get(gw.url + "/h") as r:
        seen = echoed_headers(await r.json())
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == [f"localhost:{gw.port}"]
    assert seen["host"] == [f"127.0.0.1:{echo_upstream.port}"]


async def test_credentials_in_the_upstream_url_go_as_authorization_never_in_host(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    upstream = f"http://svc:s3cret@127.0.0.1:{echo_upstream.port}"
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": upstream, "auth": "client"}]
    )
    headers = {"Authorization": "Bearer the-callers"}
    async with (
        gw.session(client_cert) as session,
        session.get(gw.url + "/h", headers=headers) as r,
    ):
        seen = echoed_headers(await r.json())
    assert seen["host"] == [f"127.0.0.1:{echo_upstream.port}"]  # RFC 9110 §7.2: no userinfo
    assert seen["authorization"] == ["Basic c3ZjOnMzY3JldA=="]  # svc:s3cret, the caller's replaced


# --- routing ------------------------------------------------------------------------


async def test_longest_prefix_wins_on_segment_boundaries(
    make_gateway: MakeGateway, echo_upstream: Upstream, start_upstream: StartUpstream
) -> None:
    from gateway.cli.echo import create_echo_app

    api = await start_upstream(create_echo_app())
    api_v2 = await start_upstream(create_echo_app())
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[
            route("/", echo_upstream.url, "none"),
            route("/api/v2", api_v2.url, "none"),
            route("/api", api.url, "none"),
        ],
    )
    expected = {
        "/": echo_upstream,
        "/api": api,
        "/api/": api,
        "/api/x": api,
        "/apiary": echo_upstream,  # not a segment boundary
        "/api/v2": api_v2,
        "/api/v2/z": api_v2,
        "/api/v20": api,
        "/other/api/v2": echo_upstream,
    }
    async with gw.session(None) as session:
        for path, upstream in expected.items():
            async with session.get(gw.url + path) as r:
                assert r.status == 200, path
                body = await r.json()
            # The gateway sets Host to the upstream's authority: it names the upstream.
            assert echoed_headers(body)["host"] == [f"127.0.0.1:{upstream.port}"], path
            assert body["path"] == path


async def test_route_boundary_keeps_policy_apiary_is_not_api(
    make_gateway: MakeGateway, echo_upstream: Upstream
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[route("/", echo_upstream.url, "client"), route("/api", echo_upstream.url, "none")],
    )
    async with gw.session(None) as session:
        async with session.get(gw.url + "/api/open") as r:
            assert r.status == 200
        async with session.get(gw.url + "/apiary") as r:
            assert r.status == 401
            assert (await r.json())["error"] == "client_certificate_required"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/%2E%2E/private",
        "/public/..%2Fprivate",
        "/public/..%2fprivate",
        "/public/./../private",
        "//private",
    ],
)
async def test_dot_segments_and_encoded_slashes_land_on_the_target_routes_policy(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued, raw_path: str
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[
            route("/public", echo_upstream.url, "none"),
            route("/private", echo_upstream.url, "client"),
        ],
    )
    anonymous = await RawConnection.open(gw, None)
    try:
        refused = await anonymous.request(get(raw_path))
    finally:
        await anonymous.close()
    # The /private policy applies: an anonymous caller is refused, not relayed
    # under /public's "auth: none".
    assert refused.status == 401, refused.body
    assert refused.json()["error"] == "client_certificate_required"

    authenticated = await RawConnection.open(gw, client_cert)
    try:
        allowed = await authenticated.request(get(raw_path))
    finally:
        await authenticated.close()
    assert allowed.status == 200
    # The upstream sees the path whose policy was checked, nothing else.
    assert allowed.json()["path"] == "/private"


async def test_strip_prefix_and_query_string(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[
            route("/svc", echo_upstream.url, strip_prefix=True),
            route("/", echo_upstream.url),
        ],
    )
    conn = await RawConnection.open(gw, client_cert)
    try:
        cases = {
            "/svc/a/b?x=1": "/a/b?x=1",
            "/svc": "/",
            "/svc/": "/",
            "/svc?only=query": "/?only=query",
            "/svcx/a": "/svcx/a",  # a different route: nothing stripped
            # Query strings pass byte for byte: order, repeats, encodings.
            "/q?b=2&a=1&a=%20x&c=%2F&d=&e": "/q?b=2&a=1&a=%20x&c=%2F&d=&e",
        }
        for sent, received in cases.items():
            response = await conn.request(get(sent))
            assert response.status == 200, sent
            assert response.json()["path"] == received, sent
    finally:
        await conn.close()


# --- streaming ----------------------------------------------------------------------


async def test_streaming_upload_of_1_gib_with_bounded_memory(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    chunk = os.urandom(MiB)
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        # One MiB object sent 1024 times: the test never holds the body either.
        for _ in range(GiB // MiB):
            sent.update(chunk)
            yield chunk

    async with (
        PeakRss() as rss,
        gw.session(client_cert) as session,
        session.put(
            gw.url + "/upload",
            data=body(),
            headers={"Content-Length": str(GiB), "Content-Type": "application/octet-stream"},
            timeout=aiohttp.ClientTimeout(total=120),
        ) as r,
    ):
        assert r.status == 200
        echoed = await r.json()
    assert echoed["body_bytes"] == GiB
    assert echoed["body_sha256"] == sent.hexdigest()
    assert rss.growth < 200 * MiB, f"RSS grew by {rss.growth // MiB} MiB for a 1 GiB upload"


async def test_streaming_chunked_upload_is_relayed_intact(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    sent = hashlib.sha256()
    total = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal total
        for i in range(200):
            piece = os.urandom(1 + i * 997)  # odd sizes: chunk boundaries move around
            sent.update(piece)
            total += len(piece)
            yield piece

    async with (
        gw.session(client_cert) as session,
        session.post(gw.url + "/chunked", data=body()) as r,
    ):
        assert r.status == 200
        echoed = await r.json()
    assert echoed["body_bytes"] == total
    assert echoed["body_sha256"] == sent.hexdigest()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_streaming_download_of_512_mib_with_bounded_memory(
    make_gateway: MakeGateway, start_upstream: StartUpstream, client_cert: Issued, framing: str
) -> None:
    size = 512 * MiB
    chunk = os.urandom(MiB)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if framing == "content-length":
            response.content_length = size
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(size // MiB):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big", stream)
    upstream = await start_upstream(app)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    expected = hashlib.sha256()
    for _ in range(size // MiB):
        expected.update(chunk)
    received = hashlib.sha256()
    count = 0
    async with (
        PeakRss() as rss,
        gw.session(client_cert) as session,
        session.get(gw.url + "/big", timeout=aiohttp.ClientTimeout(total=120)) as r,
    ):
        assert r.status == 200
        if framing == "content-length":
            assert r.headers["Content-Length"] == str(size)
        async for piece in r.content.iter_any():
            count += len(piece)
            received.update(piece)
    assert count == size
    assert received.hexdigest() == expected.hexdigest()
    assert rss.growth < 200 * MiB, f"RSS grew by {rss.growth // MiB} MiB for a 512 MiB download"


async def test_content_encoding_passes_through_byte_identical(
    make_gateway: MakeGateway, start_raw_upstream: StartUpstream, client_cert: Issued
) -> None:
    plain = b'{"hello": "world"}\n' * 5000
    request_body = gzip.compress(plain, mtime=0)
    response_body = gzip.compress(plain[::-1], mtime=0)

    async def handler(request: web.Request) -> web.Response:
        raw = await request.read()
        return web.Response(
            body=response_body,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "X-Got-Encoding": request.headers.get("Content-Encoding", ""),
                "X-Got-Sha256": hashlib.sha256(raw).hexdigest(),
            },
        )

    app = web.Application()
    app.router.add_post("/gz", handler)
    upstream = await start_raw_upstream(app)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    async with (
        gw.session(client_cert, auto_decompress=False) as session,
        session.post(
            gw.url + "/gz",
            data=request_body,
            headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["X-Got-Encoding"] == "gzip"
        assert r.headers["X-Got-Sha256"] == hashlib.sha256(request_body).hexdigest()
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.read() == response_body


# --- WebSocket ----------------------------------------------------------------------


async def test_websocket_echo_carries_identity_headers_and_strips_spoofed_ones(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    async with (
        gw.session(client_cert) as session,
        session.ws_connect(
            gw.url + "/ws",
            headers=[("X-Client-Id", SPOOF), ("X_Client_Id", SPOOF), ("X-Forwarded-For", SPOOF)],
            protocols=("echo",),
        ) as ws,
    ):
        assert ws.protocol == "echo"
        first = await ws.receive_json(timeout=5)
        seen = echoed_headers(first)
        assert seen["x-client-id"] == ["mtls.client"]
        assert seen["x-client-cert-thumbprint"] == [client_cert.thumbprint]
        assert seen["x-client-cert-subject"] == [CLIENT_DN]
        assert seen["x-forwarded-for"] == ["127.0.0.1"]
        assert not [k for k, v in first["headers"] if SPOOF in v or "_" in k]
        await ws.send_str("hello through the gateway")
        assert await ws.receive_str(timeout=5) == "hello through the gateway"
        payload = os.urandom(256 * 1024)
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=5) == payload


async def test_websocket_upgrade_without_certificate_is_refused(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    async with gw.session(None) as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(gw.url + "/ws")
    assert exc.value.status == 401


# --- upstream failures --------------------------------------------------------------


async def test_upstream_down_is_502_json(make_gateway: MakeGateway, client_cert: Issued) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/", f"http://127.0.0.1:{free_port()}")]
    )
    async with gw.session(client_cert) as session, session.get(gw.url + "/down") as r:
        assert r.status == 502
        assert r.content_type == "application/json"
        assert (await r.json())["error"] == "bad_gateway"


async def test_upstream_speaking_garbage_is_502_json(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway(
            clients=[MTLS_CLIENT], routes=[route("/", f"http://127.0.0.1:{port}")]
        )
        async with gw.session(client_cert) as session, session.get(gw.url + "/g") as r:
            assert r.status == 502
            assert (await r.json())["error"] == "bad_gateway"
    finally:
        server.close()
        await server.wait_closed()


async def test_upstream_slow_is_504_json(
    make_gateway: MakeGateway, start_upstream: StartUpstream, client_cert: Issued
) -> None:
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await release.wait()
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url, timeout=0.5)])
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        async with gw.session(client_cert) as session, session.get(gw.url + "/slow") as r:
            assert r.status == 504
            assert (await r.json())["error"] == "gateway_timeout"
        assert loop.time() - started < 3
    finally:
        release.set()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_closing_mid_response_aborts_the_client_response(
    make_gateway: MakeGateway, start_upstream: StartUpstream, client_cert: Issued, framing: str
) -> None:
    declared = 8 * MiB

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if framing == "content-length":
            response.content_length = declared
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"x" * (256 * 1024))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the upstream dies mid-body
        return response

    app = web.Application()
    app.router.add_get("/broken", broken)
    upstream = await start_upstream(app)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    received = 0
    async with gw.session(client_cert) as session:
        async with asyncio.timeout(10):  # a hang fails here, not in CI's global timeout
            async with session.get(gw.url + "/broken") as r:
                assert r.status == 200
                # A chunked stream ended cleanly (terminating chunk) would look
                # complete to the client: it must be cut instead.
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for piece in r.content.iter_any():
                        received += len(piece)
    assert received < declared


# --- HTTP/1.x framing and limits ----------------------------------------------------


async def test_http10_keep_alive_gets_content_length_and_reuses_the_connection(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    conn = await RawConnection.open(gw, client_cert)
    try:
        # What `ab -k` sends: HTTP/1.0 with an explicit keep-alive.
        first = await conn.request(get("/one", "Connection: keep-alive", version="HTTP/1.0"))
        assert first.status == 200
        # HTTP/1.0 has no chunked coding: without a length, keep-alive is impossible.
        assert int(first.headers["Content-Length"]) == len(first.body)
        assert first.headers.get("Connection", "").lower() == "keep-alive"
        assert first.json()["path"] == "/one"
        ssl_object = conn.ssl_object
        second = await conn.request(get("/two", "Connection: keep-alive", version="HTTP/1.0"))
        assert second.status == 200
        assert second.json()["path"] == "/two"
        assert conn.ssl_object is ssl_object
        # Without keep-alive, HTTP/1.0 ends with the connection.
        last = await conn.request(get("/three", version="HTTP/1.0"))
        assert last.status == 200
        assert await conn.at_eof()
    finally:
        await conn.close()


@pytest.mark.parametrize("limit", [None, 2048])
async def test_oversized_header_is_refused_cleanly(
    make_gateway: MakeGateway, client_cert: Issued, limit: int | None
) -> None:
    extra = {"limits": {"max_header_bytes": limit}} if limit else None
    gw = await make_gateway(clients=[MTLS_CLIENT], extra=extra)
    max_bytes = limit or gw.gateway.config.limits.max_header_bytes
    conn = await RawConnection.open(gw, client_cert)
    try:
        big = await conn.request(get("/big", "X-Big: " + "a" * (max_bytes + 100)))
    finally:
        await conn.close()
    assert big.status in (400, 431)
    # The gateway lives on, and a header under the limit still passes.
    conn = await RawConnection.open(gw, client_cert)
    try:
        ok = await conn.request(get("/ok", "X-Big: " + "a" * (max_bytes // 2)))
    finally:
        await conn.close()
    assert ok.status == 200
    assert echoed_headers(ok.json())["x-big"] == ["a" * (max_bytes // 2)]


async def test_route_timeout_does_not_count_a_slow_clients_upload(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    # The route timeout bounds how long the upstream keeps the gateway waiting,
    # not how long the caller takes to send: an upload slower than the timeout
    # that the upstream keeps up with must pass.
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/", echo_upstream.url, timeout=1.0)]
    )
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        # 2 s in all, never idle for more than a third of the timeout.
        for _ in range(6):
            piece = os.urandom(64 * 1024)
            sent.update(piece)
            yield piece
            await asyncio.sleep(0.33)

    async with (
        gw.session(client_cert) as session,
        session.post(gw.url + "/slow-up", data=body()) as r,
    ):
        assert r.status == 200, await r.text()
        echoed = await r.json()
    assert echoed["body_sha256"] == sent.hexdigest()


async def test_upstream_that_stops_reading_the_body_is_504(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    done = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await done.wait()  # holds the connection open, reading nothing
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0, limit=1024)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway(
            clients=[MTLS_CLIENT], routes=[route("/", f"http://127.0.0.1:{port}", timeout=0.5)]
        )
        chunk = b"x" * MiB

        async def body() -> AsyncIterator[bytes]:
            for _ in range(256):  # far more than the socket buffers hold
                yield chunk

        async with (
            asyncio.timeout(10),
            gw.session(client_cert) as session,
            session.post(gw.url + "/stall", data=body()) as r,
        ):
            assert r.status == 504
            assert (await r.json())["error"] == "gateway_timeout"
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_head_request_passes_length_without_body(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    conn = await RawConnection.open(gw, client_cert)
    try:
        await conn.send("HEAD /head HTTP/1.1\r\nHost: localhost\r\n\r\n")
        async with asyncio.timeout(5):
            head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        # The next response must start right after the head: no body bytes.
        again = await conn.request(get("/after-head"))
        assert again.status == 200
        assert again.json()["path"] == "/after-head"
    finally:
        await conn.close()


async def test_expect_100_continue_upload(make_gateway: MakeGateway, client_cert: Issued) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    conn = await RawConnection.open(gw, client_cert)
    body = os.urandom(100_000)
    try:
        await conn.send(
            "POST /expect HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(5):
            interim = await conn.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        await conn.send("", body)
        final = await conn.read_response()
        assert final.status == 200
        assert final.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        await conn.close()


async def test_caller_that_stops_sending_its_body_is_408_not_a_hang(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/", echo_upstream.url, timeout=0.5)]
    )
    conn = await RawConnection.open(gw, client_cert)
    try:
        await conn.send(
            "POST /stalled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n",
            b"only ten b",
        )
        response = await conn.read_response(timeout=5)
    finally:
        await conn.close()
    # The upstream was never at fault: not a 504.
    assert response.status == 408
    assert response.json()["error"] == "request_timeout"


async def test_caller_that_never_finishes_its_headers_is_cut_off(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], extra={"limits": {"header_read_timeout": 0.5}})
    conn = await RawConnection.open(gw, client_cert)
    try:
        await conn.send("GET /slowloris HTTP/1.1\r\nHost: localhost\r\nX-Partial: ")
        async with asyncio.timeout(5):
            leftover = await conn.reader.read()
    finally:
        await conn.close()
    # Closed (optionally after a 408), long before the 75 s keep-alive limit.
    assert leftover == b"" or leftover.startswith(b"HTTP/1.1 408"), leftover[:100]


async def test_websocket_to_an_upstream_that_is_down_is_502(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/", f"http://127.0.0.1:{free_port()}")]
    )
    async with gw.session(client_cert) as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(gw.url + "/ws")
    assert exc.value.status == 502


async def test_route_client_allow_list(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued, pki: Pki
) -> None:
    other = pki.client("other")
    gw = await make_gateway(
        clients=[
            MTLS_CLIENT,
            registry_client("other", name_secret("CN=other, OU=production, O=company")),
        ],
        routes=[
            route("/admin", echo_upstream.url, clients=["other"]),
            route("/", echo_upstream.url),
        ],
    )
    async with gw.session(client_cert) as session:
        async with session.get(gw.url + "/admin/x") as r:
            assert r.status == 403
            assert (await r.json())["error"] == "access_denied"
        async with session.get(gw.url + "/x") as r:
            assert r.status == 200
    async with gw.session(other) as session, session.get(gw.url + "/admin/x") as r:
        assert r.status == 200
        assert echoed_headers(await r.json())["x-client-id"] == ["other"]


async def test_path_without_a_route_is_404_json(
    make_gateway: MakeGateway, echo_upstream: Upstream
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/api", echo_upstream.url, "none")]
    )
    async with gw.session(None) as session, session.get(gw.url + "/elsewhere") as r:
        assert r.status == 404
        assert (await r.json())["error"] == "not_found"


async def test_ambiguous_framing_is_refused_not_forwarded(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    # Content-Length with Transfer-Encoding is the classic smuggling shape
    # (RFC 9112 §6.3): relaying either reading of it could desynchronise the
    # upstream connection that other callers share.
    gw = await make_gateway(clients=[MTLS_CLIENT])
    conn = await RawConnection.open(gw, client_cert)
    try:
        response = await conn.request(
            "POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
    finally:
        await conn.close()
    assert response.status == 400


@pytest.mark.parametrize(
    "raw_path", ["/public/..%5Cprivate", "/public/..\\private", "/public/%00x"]
)
async def test_backslash_and_control_characters_in_paths_are_refused(
    make_gateway: MakeGateway, echo_upstream: Upstream, raw_path: str
) -> None:
    """An IIS-style upstream reads "\\" as "/": such a path must not slip past /private."""
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[
            route("/public", echo_upstream.url, "none"),
            route("/private", echo_upstream.url, "client"),
        ],
    )
    connection = await RawConnection.open(gw, None)
    try:
        refused = await connection.request(get(raw_path))
    finally:
        await connection.close()
    assert refused.status == 400, refused.body
    assert refused.json()["error"] == "invalid_request"
