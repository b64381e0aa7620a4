"""Fixtures for the adversarial tests: a byte-recording upstream and a two-route gateway.

The recording upstream is a plain TCP server with its own strict HTTP/1.1
reader: it keeps every byte the gateway sent on every connection, splits them
into requests exactly as a backend would, and answers each with a small 200.
A smuggled request shows up there as a second request (or as bytes left
over), which no echo application would reveal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import GatewayUnderTest, MakeGateway, name_secret, registry_client

CLIENT_DN = "CN=client, OU=production, O=company"
MTLS_CLIENT = registry_client("mtls.client", name_secret(CLIENT_DN))


@dataclass
class RecordedRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]
    chunked: bool

    def header_names(self) -> list[str]:
        return [name.lower() for name, _ in self.headers]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class FramingError(Exception):
    """The gateway sent the upstream something a strict HTTP/1.1 reader refuses."""


@dataclass
class RecordingUpstream:
    """What the gateway sent upstream, byte for byte and request by request."""

    port: int
    requests: list[RecordedRequest] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)  # one buffer per connection
    errors: list[str] = field(default_factory=list)  # framing the strict reader refused
    leftovers: list[bytes] = field(default_factory=list)  # bytes after the last request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def all_bytes(self) -> bytes:
        return b"".join(bytes(buf) for buf in self.raw)


async def _read_line(reader: asyncio.StreamReader, raw: bytearray) -> bytes:
    line = await reader.readuntil(b"\r\n")
    raw += line
    if b"\n" in line[:-2] or b"\r" in line[:-2]:
        raise FramingError(f"bare CR or LF in {line!r}")
    return line[:-2]


async def _read_request(reader: asyncio.StreamReader, raw: bytearray) -> RecordedRequest | None:
    try:
        request_line = await _read_line(reader, raw)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raw += exc.partial
            raise FramingError(
                f"connection closed inside a request line: {exc.partial!r}"
            ) from None
        return None
    parts = request_line.decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise FramingError(f"bad request line {request_line!r}")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    while line := await _read_line(reader, raw):
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip() or line[:1] in b" \t":
            raise FramingError(f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    if lengths and codings:
        raise FramingError("Content-Length together with Transfer-Encoding")
    if len(lengths) > 1:
        raise FramingError(f"several Content-Length fields: {lengths}")
    body = bytearray()
    trailers: list[tuple[str, str]] = []
    chunked = False
    if codings:
        if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
            raise FramingError(f"Transfer-Encoding other than chunked: {codings}")
        chunked = True
        while True:
            size_line = (await _read_line(reader, raw)).split(b";")[0]
            if not size_line or any(c not in b"0123456789abcdefABCDEF" for c in size_line):
                raise FramingError(f"bad chunk size {size_line!r}")
            size = int(size_line, 16)
            if size == 0:
                while line := await _read_line(reader, raw):
                    name, _, value = line.decode("latin-1").partition(":")
                    trailers.append((name, value.strip()))
                break
            data = await reader.readexactly(size + 2)
            raw += data
            if data[-2:] != b"\r\n":
                raise FramingError("chunk not followed by CRLF")
            body += data[:-2]
    elif lengths:
        if not lengths[0].isdigit():
            raise FramingError(f"bad Content-Length {lengths[0]!r}")
        data = await reader.readexactly(int(lengths[0]))
        raw += data
        body += data
    return RecordedRequest(method, target, version, headers, bytes(body), trailers, chunked)


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nupstream"


@pytest.fixture
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    recorder = RecordingUpstream(port=0)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        raw = bytearray()
        recorder.raw.append(raw)
        try:
            while True:
                request = await _read_request(reader, raw)
                if request is None:
                    break
                recorder.requests.append(request)
                writer.write(_OK)
                await writer.drain()
        except FramingError as exc:
            recorder.errors.append(str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                rest = await asyncio.wait_for(reader.read(65536), 0.01)
                if rest:
                    recorder.leftovers.append(rest)
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    yield recorder
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


def two_routes(upstream_url: str) -> list[dict[str, str]]:
    """The routing tests' layout: an open route and a certificate-protected one."""
    return [
        {"prefix": "/public", "upstream": upstream_url, "auth": "none"},
        {"prefix": "/private", "upstream": upstream_url, "auth": "client"},
    ]


async def recording_gateway(
    make_gateway: MakeGateway, upstream: RecordingUpstream, **kwargs: object
) -> GatewayUnderTest:
    return await make_gateway(
        clients=[MTLS_CLIENT],
        routes=two_routes(upstream.url),
        **kwargs,
    )
