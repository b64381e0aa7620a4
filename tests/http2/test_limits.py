"""The downstream HTTP/2 limits, each provoked by a real client over real TLS.

Concurrent streams, header list size (HPACK bomb), CONTINUATION flood and
the rapid-reset pattern (CVE-2023-44487).
"""

from __future__ import annotations

import asyncio
import json

from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame

from gateway.http2.limits import Http2Limits
from gateway.pipeline.messages import Request, Response
from tests.http2.conftest import StartH2
from tests.http2.peer import RawH2
from tests.pki import Issued, Pki


async def _connected(port: int, pki: Pki, cert: Issued) -> RawH2:
    peer = await RawH2.connect(port, pki.client_context(cert))
    peer.start()
    peer.send()
    return peer


async def _settled(port: int, pki: Pki, cert: Issued) -> RawH2:
    """A client whose SETTINGS exchange is over: one request answered first."""
    peer = await _connected(port, pki, cert)
    answer = await peer.answer(peer.request("/warm-up"))
    assert answer.status == 200
    return peer


async def _closed_with(peer: RawH2) -> ErrorCodes | None:
    """Read until the server closed; the GOAWAY's code, or None after a TCP reset.

    A server closing with our frames still unread makes its kernel send RST,
    which may discard the GOAWAY before we read it: the connection is closed
    either way, which is what a limit must achieve.
    """
    async with asyncio.timeout(5):
        while not peer.eof:
            try:
                await peer.pump()
            except ConnectionResetError:
                break
    if peer.terminated is None:
        return None
    code = peer.terminated.error_code
    assert code is not None  # a GOAWAY always names one
    return ErrorCodes(code)


async def test_a_stream_past_the_concurrency_limit_is_refused_and_the_connection_lives(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    release = asyncio.Event()
    started = 0

    async def held(request: Request) -> Response:
        nonlocal started
        started += 1
        await release.wait()
        return Response(200, [], b"held")

    listener = await h2_listener(held, limits=Http2Limits(max_concurrent_streams=3))
    peer = await RawH2.connect(listener.port, pki.client_context(client_cert))
    peer.start()
    # All in the first flight, before the server's SETTINGS arrived: the
    # client does not know the limit yet, the server enforces it anyway, on
    # the one stream too many (RFC 9113 §5.1.2), which may be retried (§8.7).
    streams = [peer.request("/held") for _ in range(4)]
    refused = await peer.answer(streams[3])
    assert refused.reset == ErrorCodes.REFUSED_STREAM
    assert started == 3 and peer.terminated is None
    release.set()
    for stream in streams[:3]:
        answer = await peer.answer(stream)
        assert (answer.status, answer.body) == (200, b"held")
    retried = await peer.answer(peer.request("/held"))  # the refused one, again
    assert (retried.status, retried.body) == (200, b"held")
    assert peer.terminated is None
    await peer.close()


async def test_refusing_streams_on_demand_counts_as_a_rapid_reset_flood(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    # Opening streams only to have them refused costs the caller as little
    # as opening and resetting them (CVE-2023-44487): the same bound.
    release = asyncio.Event()

    async def held(request: Request) -> Response:
        await release.wait()
        return Response(200, [], b"")

    limits = Http2Limits(max_concurrent_streams=1, max_resets=4, reset_window=10.0)
    listener = await h2_listener(held, limits=limits)
    peer = await RawH2.connect(listener.port, pki.client_context(client_cert))
    peer.start()
    for _ in range(8):
        peer.request("/held")
    assert await _closed_with(peer) in (ErrorCodes.ENHANCE_YOUR_CALM, None)
    release.set()


async def test_streams_within_the_limit_all_run(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    running = 0
    all_three = asyncio.Event()

    async def held(request: Request) -> Response:
        nonlocal running
        running += 1
        if running == 3:
            all_three.set()
        await asyncio.wait_for(all_three.wait(), 5)
        return Response(200, [], b"ok")

    listener = await h2_listener(held, limits=Http2Limits(max_concurrent_streams=3))
    peer = await _connected(listener.port, pki, client_cert)
    streams = [peer.request("/held") for _ in range(3)]
    for stream in streams:
        assert (await peer.answer(stream)).body == b"ok"
    await peer.close()


async def _ok(request: Request) -> Response:
    return Response(200, [], b"ok")


def _flood(fields: int) -> list[tuple[str, str]]:
    # Distinct values, so HPACK's table cannot make the block small.
    return [(f"x-flood-{i}", f"{i:04d}" * 16) for i in range(fields)]


async def test_a_header_block_over_the_advertised_size_is_answered_431(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    listener = await h2_listener(_ok, limits=Http2Limits(max_header_list_size=4096))
    peer = await _settled(listener.port, pki, client_cert)
    answer = await peer.answer(peer.request("/", headers=_flood(100)))  # ~11 KB decoded
    assert answer.status == 431
    assert json.loads(answer.body) == {
        "error": "invalid_request",
        "error_description": "request header fields too large",
    }
    assert (await peer.answer(peer.request("/small"))).body == b"ok"  # the connection lives
    await peer.close()


async def test_a_header_block_past_the_hard_limit_ends_the_connection_with_enhance_your_calm(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    listener = await h2_listener(_ok)
    peer = await _settled(listener.port, pki, client_cert)
    peer.request("/", headers=_flood(700))  # ~75 KB decoded, past HARD_HEADER_LIST_SIZE
    assert await _closed_with(peer) in (ErrorCodes.ENHANCE_YOUR_CALM, None)


async def test_an_hpack_bomb_ends_the_connection_with_enhance_your_calm(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    listener = await h2_listener(_ok)
    peer = await _settled(listener.port, pki, client_cert)
    # One 4 KiB field into the dynamic table, then referenced by index again
    # and again: a block of a few hundred bytes that decodes to megabytes.
    bomb = [("x-bomb", "b" * 4000)] * 200
    peer.request("/", headers=bomb)
    assert await _closed_with(peer) in (ErrorCodes.ENHANCE_YOUR_CALM, None)


async def test_a_continuation_flood_ends_the_connection(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    listener = await h2_listener(_ok)
    peer = await _settled(listener.port, pki, client_cert)
    # CVE-2024-27316's pattern: a header block that never ends, one small
    # CONTINUATION at a time.  h2 allows 64 frames per block.
    block = Encoder().encode(
        [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/")]
    )
    frames = [HeadersFrame(3, data=block).serialize()]
    frames += [ContinuationFrame(3, data=b"\x40\x01a\x01b").serialize() for _ in range(100)]
    peer.writer.write(b"".join(frames))
    assert await _closed_with(peer) in (ErrorCodes.PROTOCOL_ERROR, None)


async def test_rapid_reset_past_the_limit_ends_the_connection_with_enhance_your_calm(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    started = cancelled = 0

    async def slow(request: Request) -> Response:
        nonlocal started, cancelled
        if request.path == "/warm-up":
            return Response(200, [], b"")
        started += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return Response(200, [], b"")

    listener = await h2_listener(slow, limits=Http2Limits(max_resets=20, reset_window=60))
    peer = await _settled(listener.port, pki, client_cert)
    for _ in range(40):
        stream = peer.request("/work")
        peer.conn.reset_stream(stream, ErrorCodes.CANCEL)
        peer.send()
    assert await _closed_with(peer) in (ErrorCodes.ENHANCE_YOUR_CALM, None)
    async with asyncio.timeout(2):
        while cancelled != started:  # no handler outlives its reset stream
            await asyncio.sleep(0.01)


async def test_resets_below_the_limit_keep_the_connection(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    async def maybe_slow(request: Request) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(30)  # reset long before
        return Response(200, [], b"ok")

    listener = await h2_listener(maybe_slow, limits=Http2Limits(max_resets=20, reset_window=60))
    peer = await _settled(listener.port, pki, client_cert)
    for _ in range(20):
        stream = peer.request("/slow")
        peer.conn.reset_stream(stream, ErrorCodes.CANCEL)
        peer.send()
    answer = await peer.answer(peer.request("/fast"))
    assert answer.body == b"ok"
    assert peer.terminated is None
    await peer.close()


async def test_a_reset_cancels_the_running_handler(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    running = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(request: Request) -> Response:
        running.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(200, [], b"")

    listener = await h2_listener(slow)
    peer = await _connected(listener.port, pki, client_cert)
    stream = peer.request("/slow")
    await asyncio.wait_for(running.wait(), 5)
    peer.conn.reset_stream(stream, ErrorCodes.CANCEL)
    peer.send()
    await asyncio.wait_for(cancelled.wait(), 5)
    await peer.close()
