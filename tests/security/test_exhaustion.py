"""Resource exhaustion: heads, bodies and connections far beyond any limit.

Each test pushes one resource past its limit over real TLS and then checks
that the gateway still answers a normal request: a refusal is the expected
outcome, a crash, a hang or unbounded memory is not.  (Trickled heads and
silent TLS connections: tests/test_deadlines.py; a 1 GiB streamed upload in
bounded memory: tests/test_proxy.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from tests.conftest import GatewayUnderTest, MakeGateway, write_config
from tests.pki import Issued, Pki
from tests.security.conftest import RecordingUpstream, recording_gateway
from tests.test_proxy import MiB, PeakRss, RawConnection, get


async def still_serves(gw: GatewayUnderTest, cert: Issued | None = None) -> None:
    conn = await RawConnection.open(gw, cert)
    try:
        response = await conn.request(get("/public/after"))
    finally:
        await conn.close()
    assert response.status == 200


async def test_thousands_of_headers_are_refused_with_400(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        lines = [f"X-Header-{i}: v" for i in range(5000)]
        response = await conn.request(get("/public/many", *lines))
        assert await conn.at_eof()
    finally:
        await conn.close()
    assert response.status == 400
    assert recording_upstream.requests == []
    await still_serves(gw)


async def stream_until_answered(
    conn: RawConnection, head: bytes, *, total: int, chunk: bytes
) -> tuple[int, bytes]:
    """Send ``head`` then ``chunk`` repeatedly up to ``total`` bytes; stop at the first answer.

    Returns the bytes sent when the gateway answered (or closed) and what it said.
    """
    sent = 0
    answered = asyncio.Event()

    async def pump() -> None:
        nonlocal sent
        conn.writer.write(head)
        while sent < total and not answered.is_set():
            conn.writer.write(chunk)
            await conn.writer.drain()
            sent += len(chunk)

    writer = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(30):
            answer = await conn.reader.read(4096)
        answered.set()
        return sent, answer
    except (ConnectionError, ssl.SSLError):
        answered.set()
        return sent, b""
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError, OSError):
            await writer


@pytest.mark.parametrize("where", ["header value", "request target"])
async def test_a_100_mb_head_line_is_cut_off_early_in_bounded_memory(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, where: str
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    total = 100 * MiB
    if where == "header value":
        head = b"GET /public/big HTTP/1.1\r\nHost: localhost\r\nX-Big: "
        chunk = b"a" * MiB
    else:
        head = b"GET /public/"
        chunk = b"a" * MiB
    conn = await RawConnection.open(gw, None)
    try:
        async with PeakRss() as rss:
            sent, answer = await stream_until_answered(conn, head, total=total, chunk=chunk)
    finally:
        await conn.close()
    # The parser stops at max_header_bytes: the answer (400, or a plain close)
    # comes long before the 100 MB are through, and nothing was buffered.
    assert answer == b"" or answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert sent < total // 2, f"the gateway read {sent // MiB} MiB of one head line"
    assert rss.growth < 64 * MiB, f"RSS grew by {rss.growth // MiB} MiB"
    assert recording_upstream.requests == []
    await still_serves(gw)


async def test_token_request_declaring_a_huge_body_is_refused_before_it_is_sent(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)  # no certificate: the size check comes first
    try:
        response = await conn.request(
            "POST /connect/token HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {100 * MiB}\r\n\r\n"
        )
    finally:
        await conn.close()
    assert response.status == 413
    assert response.json()["error"] == "invalid_request"


async def test_token_request_streaming_a_huge_chunked_body_is_cut_off_early(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, client_cert: Issued
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    chunk_data = b"scope=" + b"x" * (64 * 1024 - 7) + b"&"
    chunk = f"{len(chunk_data):x}\r\n".encode() + chunk_data + b"\r\n"
    head = (
        b"POST /connect/token HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    conn = await RawConnection.open(gw, client_cert)
    try:
        async with PeakRss() as rss:
            sent, answer = await stream_until_answered(conn, head, total=100 * MiB, chunk=chunk)
    finally:
        await conn.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"invalid_request"' in answer
    assert sent < 50 * MiB, f"{sent // MiB} MiB sent before the gateway answered"
    assert rss.growth < 64 * MiB, f"RSS grew by {rss.growth // MiB} MiB"
    await still_serves(gw)


async def _hold_idle(gw: GatewayUnderTest, cert: Issued | None) -> RawConnection:
    """A keep-alive connection that made one request and now sits idle."""
    conn = await RawConnection.open(gw, cert)
    response = await conn.request(get("/public/hold"))
    assert response.status == 200
    return conn


async def test_idle_connections_beyond_max_connections_get_503_and_slots_come_back(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, client_cert: Issued
) -> None:
    gw = await recording_gateway(
        make_gateway, recording_upstream, extra={"limits": {"max_connections": 5}}
    )
    held = [await _hold_idle(gw, client_cert) for _ in range(5)]
    try:
        # The sixth handshake completes, then the gateway answers 503 and
        # closes without reading a request: no parser, no handler for it.
        extra = await RawConnection.open(gw, client_cert)
        try:
            refused = await extra.read_response(timeout=5)
            assert await extra.at_eof()
        finally:
            await extra.close()
        assert refused.status == 503
        assert refused.json()["error"] == "temporarily_unavailable"
        assert refused.headers["Retry-After"]
        # Held connections keep working; a closed one frees its slot.
        again = await held[0].request(get("/public/still-here"))
        assert again.status == 200
        await held.pop().close()
        for _ in range(50):
            # Until the gateway has seen the close, a new connection may still get 503.
            with contextlib.suppress(
                AssertionError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError
            ):
                await still_serves(gw)
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("a freed slot was never given to a new connection")
    finally:
        for conn in held:
            await conn.close()


async def test_failed_handshakes_and_timeouts_do_not_leak_connection_slots(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, pki: Pki
) -> None:
    gw = await recording_gateway(
        make_gateway,
        recording_upstream,
        extra={"limits": {"max_connections": 3, "header_read_timeout": 0.3}},
    )
    stranger = Pki(pki.directory / "stranger", "Stranger CA").client("stranger")
    for _ in range(4):  # more than the 3 slots: one leak per round would show
        # An untrusted certificate: the handshake fails (TLS alert).
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            conn = await RawConnection.open(gw, stranger)
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                await conn.request(get("/public/x"))
            await conn.close()
        # A caller that connects and says nothing: closed at the deadline.
        silent = await RawConnection.open(gw, None)
        await silent.at_eof(timeout=5)
        await silent.close()
    await still_serves(gw)


async def test_a_tcp_connection_that_never_starts_tls_is_closed_at_the_deadline(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    gw = await recording_gateway(
        make_gateway, recording_upstream, extra={"limits": {"header_read_timeout": 0.5}}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
        assert time.monotonic() - started < 4
    finally:
        writer.close()
    await still_serves(gw)


@pytest.mark.parametrize("limit", [None, 50])
async def test_a_burst_of_200_full_handshakes(
    make_gateway: MakeGateway,
    recording_upstream: RecordingUpstream,
    client_cert: Issued,
    limit: int | None,
) -> None:
    extra = {"limits": {"max_connections": limit}} if limit else None
    gw = await recording_gateway(make_gateway, recording_upstream, extra=extra)
    context = gw.ssl_context(client_cert)

    async def one(i: int) -> str:
        # No session is offered: each connection is a full handshake.
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gw.port, ssl=context, server_hostname="localhost"
            )
        except (ConnectionError, ssl.SSLError):
            return "reset"
        conn = RawConnection(reader, writer)
        try:
            conn.writer.write(get(f"/private/burst-{i}").encode())
            response = await conn.read_response(timeout=20)
            if response.status == 503:
                assert response.json()["error"] == "temporarily_unavailable"
            return str(response.status)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return "reset"
        finally:
            await conn.close()

    started = time.monotonic()
    async with asyncio.timeout(60):
        outcomes = await asyncio.gather(*(one(i) for i in range(200)))
    elapsed = time.monotonic() - started
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    print(f"200 parallel handshakes (limit {limit}): {counts} in {elapsed:.2f}s")
    # Every attempt ends in an answer: served, or refused in a way a client
    # understands (503, or a reset it can retry); never a hang or a 5xx of
    # another kind.
    assert set(outcomes) <= {"200", "503", "reset"}, counts
    if limit is None:
        assert counts == {"200": 200}
    else:
        assert counts.get("200", 0) >= limit
        assert counts.get("200", 0) + counts.get("503", 0) + counts.get("reset", 0) == 200
    assert len(recording_upstream.requests) == counts.get("200", 0)
    await still_serves(gw, client_cert)


def test_max_connections_must_be_a_positive_whole_number(tmp_path: Path, pki: Pki) -> None:
    for bad in (0, -1, 1.5, "many"):
        path, _ = write_config(
            tmp_path,
            pki,
            clients=[],
            routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
            extra={"limits": {"max_connections": bad}},
        )
        with pytest.raises(ConfigError) as exc:
            load_config(path, env={})
        assert "limits.max_connections: expected a positive whole number" in str(exc.value)
