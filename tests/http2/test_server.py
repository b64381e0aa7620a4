"""gateway.http2.server over real TLS, driven by h2 (the library) as the client.

Each test starts the production TLS layer with ALPN h2 and a small handler
of its own; the client is tests/http2/peer.py (stdlib TLS + h2 by hand).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

from h2.errors import ErrorCodes
from h2.events import RemoteSettingsChanged
from h2.settings import SettingCodes

from gateway.http2.limits import Http2Limits
from gateway.pipeline.messages import Request, RequestBody, Response, json_response
from tests.http2.conftest import StartH2
from tests.http2.peer import RawH2
from tests.pki import Issued, Pki


async def _describe(request: Request) -> Response:
    body = await request.read()
    return json_response(
        200,
        json.dumps(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "path": request.path,
                "query": request.query_string,
                "host": request.host,
                "protocol": request.protocol,
                "version": list(request.version),
                "body_exists": request.body_exists,
                "body": body.decode(),
                "headers": list(request.headers.items()),
            }
        ).encode(),
    )


async def _client(port: int, pki: Pki, cert: Issued, **kwargs: object) -> RawH2:
    peer = await RawH2.connect(port, pki.client_context(cert), **kwargs)  # type: ignore[arg-type]
    peer.start()
    peer.send()
    return peer


async def test_a_request_reaches_the_handler_with_authority_as_host(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    listener = await h2_listener(_describe)
    peer = await _client(listener.port, pki, client_cert)
    assert peer.alpn == "h2"
    stream = peer.request(
        "/a%20b/c?x=1&y=2",
        method="POST",
        authority="api.example:8443",
        headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-thing", "v")],
        body=b"hello",
    )
    answer = await peer.answer(stream)
    assert answer.status == 200
    seen = json.loads(answer.body)
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/a%20b/c?x=1&y=2"
    assert seen["path"] == "/a b/c"
    assert seen["query"] == "x=1&y=2"
    assert seen["host"] == "api.example:8443"
    assert seen["protocol"] == "HTTP/2"
    assert seen["version"] == [2, 0]
    assert seen["body_exists"] is True
    assert seen["body"] == "hello"
    headers = dict(seen["headers"])
    assert headers["Cookie"] == "a=1; b=2"  # RFC 9113 §8.2.3: joined for HTTP/1.1
    assert headers["x-thing"] == "v"
    assert not any(name.startswith(":") for name in headers)
    assert answer.header("content-type") == "application/json"
    assert answer.header("content-length") == str(len(answer.body))
    assert answer.header("server") == "mtls-gateway"
    assert answer.header("date") is not None
    await peer.close()


async def test_a_get_has_no_body(h2_listener: StartH2, pki: Pki, client_cert: Issued) -> None:
    listener = await h2_listener(_describe)
    peer = await _client(listener.port, pki, client_cert)
    answer = await peer.answer(peer.request("/"))
    assert json.loads(answer.body)["body_exists"] is False
    await peer.close()


async def test_connection_specific_fields_of_an_answer_are_not_sent(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    async def http1_style(request: Request) -> Response:
        return Response(
            200,
            [
                ("Connection", "keep-alive, X-Hop"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("X-Hop", "named in Connection"),
                ("TE", "gzip"),
                ("X-Upper-Case", "Kept"),
            ],
            b"ok",
        )

    listener = await h2_listener(http1_style)
    peer = await _client(listener.port, pki, client_cert)
    answer = await peer.answer(peer.request("/"))
    assert answer.status == 200 and answer.body == b"ok"
    names = [name for name, _ in answer.headers]
    for name in ("connection", "keep-alive", "transfer-encoding", "upgrade", "x-hop", "te"):
        assert name not in names
    assert answer.header("x-upper-case") == "Kept"  # RFC 9113 §8.2.1: lowercased
    await peer.close()


async def test_streams_run_concurrently(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    arrived = 0
    all_here = asyncio.Event()

    async def barrier(request: Request) -> Response:
        nonlocal arrived
        arrived += 1
        if arrived == 10:
            all_here.set()
        await asyncio.wait_for(all_here.wait(), 5)  # only if all ten run at once
        return Response(200, [], request.path.encode())

    listener = await h2_listener(barrier)
    peer = await _client(listener.port, pki, client_cert)
    streams = [peer.request(f"/{i}") for i in range(10)]
    for i, stream in enumerate(streams):
        answer = await peer.answer(stream)
        assert (answer.status, answer.body) == (200, f"/{i}".encode())
    await peer.close()


async def test_trailers_follow_a_streamed_body(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    async def with_trailers(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"one ", b"two ", b"three"):
                yield part

        return Response(
            200,
            [("content-type", "application/grpc")],
            stream=chunks(),
            trailers=lambda: [("grpc-status", "0"), ("grpc-message", "fine")],
        )

    listener = await h2_listener(with_trailers)
    peer = await _client(listener.port, pki, client_cert)
    answer = await peer.answer(peer.request("/"))
    assert answer.body == b"one two three"
    assert answer.header("content-length") is None  # a stream of unknown length
    assert answer.trailers == [("grpc-status", "0"), ("grpc-message", "fine")]
    await peer.close()


async def test_a_large_body_both_ways_within_the_windows(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    size = 6 * 1024 * 1024  # many times every window on the way

    async def digest_then_stream(request: Request) -> Response:
        digest = hashlib.sha256()
        while chunk := await request.content.read():
            digest.update(chunk)

        async def download() -> AsyncIterator[bytes]:
            block = bytes(range(256)) * 256  # 64 KiB
            for _ in range(size // len(block)):
                yield block

        return Response(
            200, [("x-upload-sha256", digest.hexdigest())], stream=download(), length=size
        )

    listener = await h2_listener(digest_then_stream)
    # The client's window is small: the server must wait for its credit (h2
    # on the client side raises FlowControlError on any frame past it).
    peer = await _client(listener.port, pki, client_cert, window=16384)
    upload = bytes(reversed(range(256))) * (size // 256)
    stream = peer.request("/upload", method="POST", end=False)
    await peer.send_body(stream, upload)
    answer = await peer.answer(stream, timeout=60)
    assert answer.status == 200
    assert answer.header("x-upload-sha256") == hashlib.sha256(upload).hexdigest()
    assert answer.header("content-length") == str(size)
    assert len(answer.body) == size
    assert answer.body == (bytes(range(256)) * 256) * (size // 65536)
    await peer.close()


async def test_a_caller_that_stops_reading_stops_the_body_even_with_a_huge_window(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    produced = 0
    size = 256 * 1024 * 1024

    async def endless(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            nonlocal produced
            block = b"z" * 65536
            while produced < size:
                produced += len(block)
                yield block  # no await in between: only the socket can hold it back

        return Response(200, [], stream=body(), length=size)

    listener = await h2_listener(endless)
    peer = await _client(listener.port, pki, client_cert, window=2**31 - 1)
    peer.conn.increment_flow_control_window(2**31 - 1 - 65535)  # the connection's window too
    stream = peer.request("/big")
    await peer.until(lambda: peer.answers[stream].status != 0)
    # The peer's windows admit 2 GiB; it now reads nothing more.
    await asyncio.sleep(1.0)
    # Frames are written as they are made once 64 KiB are queued, so the
    # socket's buffers and pause_writing bound what the handler produced,
    # not the peer's window (it would have been the whole 256 MiB).
    assert produced < 64 * 1024 * 1024, produced
    await peer.close()


async def test_credit_is_withheld_while_the_handler_does_not_read(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    go_on = asyncio.Event()
    received = 0

    async def slow_reader(request: Request) -> Response:
        nonlocal received
        await go_on.wait()
        while chunk := await request.content.read():
            received += len(chunk)
        return Response(200, [], str(received).encode())

    limits = Http2Limits()
    listener = await h2_listener(slow_reader, limits=limits)
    peer = await _client(listener.port, pki, client_cert)
    stream = peer.request("/upload", method="POST", end=False)
    total = 4 * 1024 * 1024
    sender = asyncio.create_task(peer.send_body(stream, b"x" * total))
    await asyncio.sleep(0.5)
    assert not sender.done()  # stalled: the server stopped giving credit back
    # What got through is bounded by RequestBody's pause point plus one
    # window of credit given before it (and one frame of slack).
    assert peer.body_sent[stream] <= RequestBody.high_water + limits.initial_window_size + 16384
    go_on.set()
    await sender
    answer = await peer.answer(stream, timeout=30)
    assert answer.body == str(total).encode()
    await peer.close()


async def test_expect_100_continue_is_answered_when_the_pipeline_asks(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    async def continuing(request: Request) -> Response:
        assert request.send_continue is not None
        request.send_continue()
        return Response(200, [], await request.read())

    listener = await h2_listener(continuing)
    peer = await _client(listener.port, pki, client_cert)
    stream = peer.request("/", method="PUT", headers=[("expect", "100-continue")], end=False)
    await peer.until(lambda: peer.answers[stream].informational == [100])
    await peer.send_body(stream, b"after continue")
    answer = await peer.answer(stream)
    assert (answer.status, answer.body) == (200, b"after continue")
    await peer.close()


async def test_a_failing_handler_resets_its_stream_only(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    async def fails_on_boom(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("boom")
        return Response(200, [], b"fine")

    listener = await h2_listener(fails_on_boom)
    peer = await _client(listener.port, pki, client_cert)
    boom = await peer.answer(peer.request("/boom"))
    assert boom.reset == ErrorCodes.INTERNAL_ERROR
    fine = await peer.answer(peer.request("/fine"))
    assert fine.body == b"fine"
    await peer.close()


async def test_an_answer_before_the_body_ended_stops_the_body_with_no_error(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    async def refuses(request: Request) -> Response:
        return json_response(403, b'{"error":"access_denied"}')

    listener = await h2_listener(refuses)
    peer = await _client(listener.port, pki, client_cert)
    stream = peer.request("/", method="POST", body=b"start", end=False)
    answer = await peer.answer(stream)
    assert answer.status == 403
    await peer.until(lambda: answer.reset is not None)
    assert answer.reset == ErrorCodes.NO_ERROR  # RFC 9113 §8.1
    await peer.close()


async def test_settings_advertise_the_limits(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    limits = Http2Limits(max_concurrent_streams=7, max_header_list_size=4096)
    listener = await h2_listener(_describe, limits=limits)
    peer = await _client(listener.port, pki, client_cert)
    await peer.until(lambda: any(isinstance(e, RemoteSettingsChanged) for e in peer.events))
    settings = peer.conn.remote_settings
    assert settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    assert settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 4096
    assert settings[SettingCodes.ENABLE_PUSH] == 0
    await peer.close()


async def test_drain_sends_goaway_finishes_admitted_streams_and_closes(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(200, [], b"finished")

    listener = await h2_listener(slow)
    peer = await _client(listener.port, pki, client_cert)
    first = peer.request("/slow")
    await peer.until(lambda: bool(listener.connections) and listener.connections[0].busy)
    listener.connections[0].drain()
    await peer.until(lambda: peer.terminated is not None)
    assert peer.terminated is not None
    assert peer.terminated.error_code == ErrorCodes.NO_ERROR
    assert peer.terminated.last_stream_id == first
    release.set()
    # h2 (the client) accepts no frame after a GOAWAY either: read on the raw
    # stream until the server closes, which it does once stream 1 ended.
    async with asyncio.timeout(5):
        while await peer.reader.read(65536):
            pass
    await peer.close()


async def test_an_idle_connection_is_closed_with_goaway(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    listener = await h2_listener(_describe, limits=Http2Limits(idle_timeout=0.3))
    peer = await _client(listener.port, pki, client_cert)
    answer = await peer.answer(peer.request("/"))
    assert answer.status == 200
    await peer.until(lambda: peer.terminated is not None, timeout=3)
    assert peer.terminated is not None and peer.terminated.error_code == ErrorCodes.NO_ERROR
    await peer.close()


async def test_streams_more_often_than_the_idle_timeout_keep_the_connection_open(
    h2_listener: StartH2, pki: Pki, client_cert: Issued
) -> None:
    # Each stream moves the idle deadline: eight requests 0.2 s apart (1.6 s
    # in all) on a 0.5 s idle timeout, then the connection goes idle and ends.
    listener = await h2_listener(_describe, limits=Http2Limits(idle_timeout=0.5))
    peer = await _client(listener.port, pki, client_cert)
    for _ in range(8):
        answer = await peer.answer(peer.request("/"))
        assert answer.status == 200
        assert peer.terminated is None
        await asyncio.sleep(0.2)
    await peer.until(lambda: peer.terminated is not None, timeout=3)
    assert peer.terminated is not None and peer.terminated.error_code == ErrorCodes.NO_ERROR
    await peer.close()
