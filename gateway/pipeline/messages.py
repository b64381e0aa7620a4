"""One request and its answer, as every listener protocol hands them to the pipeline.

The HTTP/1.1 protocol (gateway/http1/) and the HTTP/2 one build the same
``Request`` and send the same ``Response``, so routing, authentication, the
identity headers and forwarding are written once, whatever the wire.  Nothing
here knows framing: a protocol parses, fills these in, and writes what comes
back in its own framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from multidict import CIMultiDict

from gateway.pipeline.facts import RequestFacts


class StreamCut(Exception):
    """A ``Response.stream`` failed after its head went out: the protocol aborts the connection."""


class BodyTooLarge(Exception):
    """``Request.read(limit)``: the body is longer than the limit."""


class RequestBody:
    """The caller's body as it arrives: chunks fed by the protocol, read by one consumer.

    Backpressure: past ``high_water`` buffered bytes the protocol is asked to
    stop reading (``pause``), and to go on once the consumer took them.
    """

    __slots__ = ("_buffer", "_ended", "_error", "_pause", "_paused", "_resume", "_size", "_waiter")

    # ClassVar: a class attribute, also once compiled (mypyc makes plain ones per instance).
    high_water: ClassVar[int] = 256 * 1024

    def __init__(
        self,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self._buffer: list[bytes] = []
        self._size = 0
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False

    @classmethod
    def complete(cls, data: bytes) -> RequestBody:
        body = cls()
        if data:
            body.feed(data)
        body.end()
        return body

    # The protocol's side.
    def feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > self.high_water and self._pause is not None and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The connection broke (reset, malformed chunk) before the body ended."""
        if not self._ended:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The consumer's side.
    def is_eof(self) -> bool:
        """All of the body arrived and was read."""
        return self._ended and not self._buffer

    @property
    def ended(self) -> bool:
        """All of the body arrived (some may be unread)."""
        return self._ended

    @property
    def buffered(self) -> int:
        return self._size

    async def read(self, limit: int = -1) -> bytes:
        """The next bytes (at most ``limit``, if given); b"" once the body ended."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._buffer[0]
        if 0 <= limit < len(chunk):
            self._buffer[0] = chunk[limit:]
            chunk = chunk[:limit]
        else:
            del self._buffer[0]
        self._size -= len(chunk)
        if self._paused and self._size <= self.high_water // 2 and self._resume is not None:
            self._paused = False
            self._resume()
        return chunk

    async def read_all(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge past ``limit`` bytes (the rest is left unread)."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(total)
            parts.append(chunk)
        return b"".join(parts)


class StageState(Protocol):
    """Any object: what a stage keeps on the request for the stages after it.

    (Not ``object``: mypyc, compiling this dataclass, cannot resolve that name.)
    """


class Connection(Protocol):
    """What a request may ask of the connection it came on."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


# Request and Response: init=False and a written __init__, for the reason
# given at RequestFacts (one of each per request).
@dataclass(slots=True, eq=False, init=False)
class Request:
    """One parsed request.  ``path`` is decoded (RFC 3986 §2.1), ``raw_path`` is the target as sent."""

    method: str
    raw_path: str
    path: str
    query_string: str  # as sent, without the "?"
    headers: CIMultiDict[str]
    version: tuple[int, int]
    remote: str  # the caller's address (the PROXY protocol's, where one was sent)
    scheme: str  # "https" on TLS listeners, "http" on outbound ones
    transport: Connection | None
    content: RequestBody
    body_exists: bool
    protocol: str  # as logged: "HTTP/1.0", "HTTP/1.1", "HTTP/2"
    facts: RequestFacts
    # Sends "100 Continue" where the caller asked for it and may still send
    # its body (the protocol's; the pipeline calls it once the policy passed).
    send_continue: Callable[[], None] | None
    # The working state of the stage that took the request (gateway/proxy/exchange.py).
    exchange: StageState | None

    def __init__(
        self,
        method: str,
        raw_path: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str],
        version: tuple[int, int],
        remote: str,
        scheme: str,
        transport: Connection | None,
        content: RequestBody,
        body_exists: bool,
        protocol: str = "HTTP/1.1",
        facts: RequestFacts | None = None,
        send_continue: Callable[[], None] | None = None,
        exchange: StageState | None = None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.version = version
        self.remote = remote
        self.scheme = scheme
        self.transport = transport
        self.content = content
        self.body_exists = body_exists
        self.protocol = protocol
        self.facts = RequestFacts() if facts is None else facts
        self.send_continue = send_continue
        self.exchange = exchange

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    async def read(self, limit: int = 1 << 30) -> bytes:
        return await self.content.read_all(limit)


class ByteStream(Protocol):
    """The raw connection after a ``101 Switching Protocols`` (WebSockets)."""

    async def read(self) -> bytes:
        """The next bytes from the peer; b"" at its end of stream."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None:
        """Return once the peer took what was written (backpressure)."""
        ...

    def close(self) -> None: ...


Upgraded = Callable[[ByteStream], Awaitable[None]]


@dataclass(slots=True, eq=False, init=False)
class Response:
    """An answer: a whole body, or a stream of chunks, or an upgrade.

    ``headers`` are the end-to-end fields; the protocol adds the framing
    (Content-Length or chunked, Connection, Date, Server).  ``length`` is the
    stream's announced length, if any; a stream without one is chunked on
    HTTP/1.1.  ``trailers`` (HTTP/2, gRPC) are read once the stream ended.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stream: AsyncIterator[bytes] | None
    length: int | None
    reason: str
    close: bool  # the connection is not reused after this answer
    trailers: Callable[[], list[tuple[str, str]]] | None
    upgraded: Upgraded | None  # status 101: run on the raw connection
    sent_bytes: int  # body bytes the protocol wrote (the access log's "bytes")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        stream: AsyncIterator[bytes] | None = None,
        length: int | None = None,
        reason: str = "",
        close: bool = False,
        trailers: Callable[[], list[tuple[str, str]]] | None = None,
        upgraded: Upgraded | None = None,
        sent_bytes: int = 0,
    ) -> None:
        self.status = status
        self.headers = [] if headers is None else headers
        self.body = body
        self.stream = stream
        self.length = length
        self.reason = reason
        self.close = close
        self.trailers = trailers
        self.upgraded = upgraded
        self.sent_bytes = sent_bytes

    def force_close(self) -> None:
        self.close = True


def json_response(
    status: int, body: bytes, headers: dict[str, str] | None = None, *, close: bool = False
) -> Response:
    fields = [("Content-Type", "application/json")]
    if headers:
        fields += headers.items()
    return Response(status, fields, body, close=close)


Handler = Callable[[Request], Awaitable[Response]]
