"""gateway.listener.tls_protocol through the whole gateway: what a TLS peer sees.

Clients are the stdlib's blocking TLS sockets (system OpenSSL 3.0), the server
the production stack (pyOpenSSL on the bundled OpenSSL), so each test is two
independent TLS implementations talking over a real socket.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gateway.http1.reader import RequestReader
from gateway.http1.server import Http1ServerProtocol
from gateway.listener.tls_protocol import TlsServerProtocol
from gateway.listener.tls_transport import TlsTransport
from gateway.ops.heap import mallinfo
from tests.conftest import MakeGateway, Upstream, name_secret, registry_client
from tests.pki import Issued, Pki

MTLS_CLIENT = registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))


def _request_then_read_to_eof(port: int, context: ssl.SSLContext) -> tuple[bytes, str]:
    """A Connection: close request; the bytes, and how the stream ended."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        # No ragged EOFs: a TCP FIN without close_notify raises SSLEOFError.
        context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(b"GET /bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while chunk := tls.recv(65536):
                data += chunk
        except ssl.SSLEOFError:
            return data, "eof without close_notify"
        return data, "close_notify"


async def test_a_closing_connection_sends_close_notify(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    data, ending = await asyncio.to_thread(
        _request_then_read_to_eof, gw.port, pki.client_context(client_cert)
    )
    assert data.startswith(b"HTTP/1.1 200 ")
    assert ending == "close_notify"  # RFC 8446 §6.1: truncation is detectable


def _plain(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(payload)
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
        return data


async def test_plain_http_on_the_tls_port_gets_a_json_400(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    answer = await asyncio.to_thread(_plain, gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error_description"] == "plain HTTP sent to an HTTPS port (mTLS)"
    metrics = gw.gateway.metrics.render().decode()
    assert 'mtls_gateway_tls_handshake_failures_total{reason="plain_http"} 1.0' in metrics


async def test_a_silent_connection_is_closed_at_the_header_read_timeout(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], extra={"limits": {"header_read_timeout": 0.5}})
    started = time.monotonic()
    answer = await asyncio.to_thread(_plain, gw.port, b"")  # connects, sends nothing
    elapsed = time.monotonic() - started
    assert answer == b""
    assert 0.4 < elapsed < 3, elapsed
    metrics = gw.gateway.metrics.render().decode()
    assert 'mtls_gateway_tls_handshake_failures_total{reason="timeout"} 1.0' in metrics


def _handshake_error(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        try:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(100).decode("latin-1")
        except ssl.SSLError as exc:
            return str(exc.reason)


async def test_required_client_certificate_missing_is_a_certificate_required_alert(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], tls={"client_certs": "required"})
    reason = await asyncio.to_thread(_handshake_error, gw.port, pki.client_context(None))
    assert reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    metrics = gw.gateway.metrics.render().decode()
    assert 'mtls_gateway_tls_handshake_failures_total{reason="certificate_required"} 1.0' in metrics


def _negotiated(port: int, context: ssl.SSLContext, protocols: list[str]) -> str | None:
    context.set_alpn_protocols(protocols)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.selected_alpn_protocol()


async def test_alpn_prefers_h2_and_an_h2_only_client_gets_h2(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    for offered, selected in (
        (["h2", "http/1.1"], "h2"),
        (["h2"], "h2"),
        (["http/1.1"], "http/1.1"),
    ):
        context = pki.client_context(client_cert)
        assert await asyncio.to_thread(_negotiated, gw.port, context, offered) == selected


async def test_with_http2_off_alpn_is_http_1_1_only(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], listener={"http2": False})
    both = await asyncio.to_thread(
        _negotiated, gw.port, pki.client_context(client_cert), ["h2", "http/1.1"]
    )
    assert both == "http/1.1"
    h2_only = await asyncio.to_thread(_negotiated, gw.port, pki.client_context(client_cert), ["h2"])
    assert h2_only is None


def _requests_on_fresh_connections(port: int, context: ssl.SSLContext, count: int) -> list[bytes]:
    answers = []
    for _ in range(count):
        data, _ending = _request_then_read_to_eof(port, context)
        answers.append(data)
    return answers


async def test_a_closed_connection_is_freed_without_the_cyclic_collector(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    """After a burst, thousands of closed connections (OpenSSL state included)
    waited for a full collection when their objects formed cycles."""
    gw = await make_gateway(clients=[MTLS_CLIENT])
    kept = (TlsServerProtocol, TlsTransport, Http1ServerProtocol, RequestReader)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        answers = await asyncio.to_thread(
            _requests_on_fresh_connections, gw.port, pki.client_context(client_cert), 5
        )
        await asyncio.sleep(0.2)  # connection_lost runs on the loop
        gc.collect()
        in_cycles = [type(o).__name__ for o in gc.garbage if isinstance(o, kept)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert in_cycles == []


LEAK_PROBE_CONNECTIONS = 300


def _live_blocks() -> int:
    # A full collection also empties the interpreter's free lists, so what
    # remains are blocks some object still holds.  (tracemalloc misses a
    # leaked object that came off a free list: it was allocated untraced.)
    gc.collect()
    return sys.getallocatedblocks()


async def test_closed_connections_leave_no_objects_behind(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    """What a proxied TLS connection allocates is freed with it.  An object
    kept per connection grows a long-lived gateway without bound: the
    compiled build kept a dict per connection until session 9
    (tests/test_compiled.py runs this on it)."""
    if sys.getallocatedblocks() == 0:
        pytest.skip("not on pymalloc (PYTHONMALLOC=malloc): no block count")
    gw = await make_gateway(clients=[MTLS_CLIENT])
    context = pki.client_context(client_cert)
    # First use: caches, the upstream pool, lazily built objects.
    await asyncio.to_thread(_answered_200, gw.port, context, 30)
    await asyncio.sleep(0.2)
    before = _live_blocks()
    answered = await asyncio.to_thread(_answered_200, gw.port, context, LEAK_PROBE_CONNECTIONS)
    await asyncio.sleep(0.2)  # connection_lost runs on the loop
    per_connection = (_live_blocks() - before) / LEAK_PROBE_CONNECTIONS
    assert answered == LEAK_PROBE_CONNECTIONS
    assert per_connection < 0.5, f"{per_connection:.2f} blocks kept per connection"


def _answered_200(port: int, context: ssl.SSLContext, count: int) -> int:
    """Like _requests_on_fresh_connections, keeping a count only (answers kept would count)."""
    answered = 0
    for _ in range(count):
        data, _ending = _request_then_read_to_eof(port, context)
        answered += data.startswith(b"HTTP/1.1 200 ")
    return answered


# -- what an idle connection keeps after a large upload and download ----------------

BULK = 1 << 20
HELD = 12


def _malloc_in_use() -> Callable[[], int] | None:
    """glibc's bytes in use (heap and mmapped chunks): where OpenSSL's buffers live."""
    if "jemalloc" in os.environ.get("LD_PRELOAD", "") or mallinfo() is None:
        return None

    def in_use() -> int:
        gc.collect()
        info = mallinfo()
        assert info is not None
        return int(info.uordblks + info.hblkhd)

    return in_use


CHUNK = 64 * 1024  # no 1 MiB object lives anywhere: the allocator counts would see it


def _post_and_hold(port: int, context: ssl.SSLContext, size: int) -> ssl.SSLSocket:
    """One keep-alive connection that POSTed ``size`` bytes and read ``size`` back."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"POST /bulk HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % size)
    piece = b"x" * min(size, CHUNK)
    for start in range(0, size, CHUNK):
        tls.sendall(piece[: size - start])
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(CHUNK)
    answer, _, body = data.partition(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    received = len(body)
    while received < size:
        received += len(tls.recv(CHUNK))
    assert received == size
    return tls


def _held(port: int, context: ssl.SSLContext, size: int, count: int) -> list[ssl.SSLSocket]:
    return [_post_and_hold(port, context, size) for _ in range(count)]


def _still_answering(conns: list[ssl.SSLSocket]) -> int:
    answered = 0
    for tls in conns:
        tls.sendall(b"POST /bulk HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx")
        answered += tls.recv(CHUNK).startswith(b"HTTP/1.1 200 ")
    return answered


StartUpstream = Callable[[web.Application], Awaitable[Upstream]]


async def _bulk_upstream(start_upstream: StartUpstream, *, read_pause: float = 0.0) -> Upstream:
    """POST /bulk answers as many bytes as it got, and their SHA-256 in a header."""

    async def bulk(request: web.Request) -> web.StreamResponse:
        size = 0
        digest = hashlib.sha256()
        async for piece in request.content.iter_chunked(CHUNK):
            size += len(piece)
            digest.update(piece)
            if read_pause:
                await asyncio.sleep(read_pause)  # a slow reader: the gateway must pause
        response = web.StreamResponse(
            headers={"Content-Length": str(size), "Body-Sha256": digest.hexdigest()}
        )
        await response.prepare(request)
        piece = b"y" * min(size, CHUNK)
        for start in range(0, size, CHUNK):
            await response.write(piece[: size - start])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/bulk", bulk)
    return await start_upstream(app)


async def test_an_idle_connection_keeps_no_buffer_from_its_large_transfers(
    make_gateway: MakeGateway,
    start_upstream: StartUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    """A memory BIO keeps the largest buffer it ever held until the connection
    ends.  Each socket read (up to 256 KiB) written into it at once, and each
    large response sealed at once, left 750-1,100 KiB more here with every
    idle connection that had moved 1 MiB each way; a slice at a time
    (records.BIO_SLICE), about 60: at most ~22 KiB per BIO."""
    in_use = _malloc_in_use()
    if in_use is None:
        pytest.skip("needs glibc malloc (mallinfo2), not a preloaded allocator")
    upstream = await _bulk_upstream(start_upstream)
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": upstream.url, "auth": "client"}]
    )
    context = pki.client_context(client_cert)
    # First use, both sizes: caches, the upstream pool, the allocator's arenas.
    warm = await asyncio.to_thread(_held, gw.port, context, 1, HELD)
    warm += await asyncio.to_thread(_held, gw.port, context, BULK, 2)
    for conn in warm:
        conn.close()
    await asyncio.sleep(0.5)  # connection_lost runs on the loop
    start = in_use()
    small = await asyncio.to_thread(_held, gw.port, context, 1, HELD)
    after_small = in_use()
    large = await asyncio.to_thread(_held, gw.port, context, BULK, HELD)
    after_large = in_use()
    try:
        alive = await asyncio.to_thread(_still_answering, small + large)
        extra = ((after_large - after_small) - (after_small - start)) / HELD / 1024
        assert alive == 2 * HELD
        assert extra < 96, f"{extra:.0f} KiB more per idle connection after 1 MiB each way"
    finally:
        for conn in small + large:
            conn.close()


def _upload_digest(port: int, context: ssl.SSLContext, size: int) -> tuple[str, str]:
    """POST ``size`` random bytes in one sendall; (what was sent, what the upstream got)."""
    body = os.urandom(size)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        head = b"POST /bulk HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % size
        tls.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls.recv(CHUNK)
    answer = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert answer.startswith("HTTP/1.1 200 "), answer
    got = next(
        line.split(":", 1)[1].strip()
        for line in answer.split("\r\n")
        if line.lower().startswith("body-sha256:")
    )
    return hashlib.sha256(body).hexdigest(), got


async def test_a_large_upload_to_a_slow_upstream_arrives_intact(
    make_gateway: MakeGateway, start_upstream: StartUpstream, pki: Pki, client_cert: Issued
) -> None:
    """Socket reads larger than records.BIO_SLICE go into OpenSSL a slice at a
    time; when the upstream reads slowly the HTTP layer pauses reading between
    slices, and the rest of the segment waits for resume_reading, in order."""
    upstream = await _bulk_upstream(start_upstream, read_pause=0.005)
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": upstream.url, "auth": "client"}]
    )
    sent, got = await asyncio.to_thread(
        _upload_digest, gw.port, pki.client_context(client_cert), 8 << 20
    )
    assert got == sent
