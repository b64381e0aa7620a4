"""One HTTP/1.1 connection to an upstream, one exchange at a time, on llhttp.

How it parses, times and pauses: the package docstring (gateway/upstream/).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from gateway.timer import LazyTimer
from gateway.upstream.errors import (
    InvalidResponse,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.upstream.names import response_name
from gateway.upstream.origin import Origin

if TYPE_CHECKING:
    from gateway.upstream.pool import UpstreamPool

# The limits aiohttp's client applied to upstream answers (max_line_size,
# max_field_size): an upstream cannot make the gateway buffer without bound.
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
# Relayed body bytes buffered before upstream reading pauses (aiohttp's client
# paused at 2 x 64 KiB): what a slow downstream can make the gateway hold.
HIGH_WATER = 128 * 1024
LOW_WATER = 32 * 1024

_IDLE, _HEAD, _BODY, _DONE, _BROKEN = range(5)

# What a lost connection's parser is swapped for.  A parser holds its
# protocol's callbacks, so connection and parser form a reference cycle that
# only the cyclic collector frees, and after a burst thousands of closed
# connections (parser, buffers, headers) waited for a full collection
# (bench/RESULTS.md, "Bursts").  Dropping the parser lets reference counting
# free a connection as soon as its transport lets go of it.
_DETACHED_PARSER = httptools.HttpResponseParser(object())


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lowered = response_name(name)[0]
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            return True
    return False


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream, one exchange at a time."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_close_delimited",
        "_drain_waiter",
        "_error",
        "_fresh_parser",
        "_head_only",
        "_head_waiter",
        "_headers",
        "_keep_alive",
        "_loop",
        "_parser",
        "_paused_reading",
        "_paused_writing",
        "_phase",
        "_pool",
        "_timeout",
        "_timer",
        "_waiter",
        "body_sent",
        "context",
        "idle_since",
        "key",
        "lost",
        "origin",
        "reason",
        "status",
        "transport",
        "version",
        "waiting_on_caller",
    )

    def __init__(self, pool: UpstreamPool, origin: Origin, context: ssl.SSLContext | None) -> None:
        self._pool = pool
        self.origin = origin
        self.context = context  # the TLS client context it was opened with (None: plain)
        self.key = (origin.endpoint, context)  # its place in the pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = True
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._phase = _IDLE
        self._head_waiter: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = False
        self._error: BaseException | None = None
        self._timer = LazyTimer(self._loop)
        self._timeout = 0.0
        self._head_only = False
        self._close_delimited = False
        self._keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = ""
        self.version = "1.1"
        self.body_sent = True
        self.waiting_on_caller = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self._pool.opened(self)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _IDLE:
            # Bytes nobody asked for: the stream is out of step; never reuse it.
            self._fail(UpstreamDisconnected("unexpected data from an idle upstream connection"))
            return
        if phase >= _DONE:
            self._keep_alive = False  # bytes after the answer: not reusable
            return
        if phase == _BODY:
            self._timer.push(self._timeout)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponse("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            if self._phase == _DONE:
                self._keep_alive = False  # a second message after the answer
            else:
                self._fail(self._error or InvalidResponse(f"invalid HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close the transport: HTTP/1.1 has no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self._pool.forget(self, idle=self._phase == _IDLE)
        if self._phase == _BODY and self._close_delimited and exc is None:
            self._complete()  # the end of a close-delimited body (RFC 9112 §6.3)
        elif self._phase < _DONE:
            self._fail(UpstreamDisconnected("the upstream closed the connection"))
        self._timer.stop()
        # Never called from inside feed_data (asyncio defers connection_lost).
        self._parser = _DETACHED_PARSER
        self._fresh_parser = False
        _wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        _wake(self._drain_waiter)

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase != _HEAD:
            # Not stored as the exchange's error: the answer before it stands.
            raise InvalidResponse("a second response to one request")
        self._headers = []

    def on_status(self, status: bytes) -> None:
        self.reason = status.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(value) > MAX_FIELD_SIZE or len(name) > MAX_FIELD_SIZE:
            raise self._raise(InvalidResponse("upstream header field too long"))
        headers = self._headers
        if len(headers) >= MAX_HEADERS:
            raise self._raise(InvalidResponse("too many upstream header fields"))
        # llhttp strips the whitespace before a value, not after (aiohttp's
        # rule).  Looked at first: most values end in neither, and a method
        # call per field costs more than two comparisons.
        if value and (value[-1] == 32 or value[-1] == 9):
            value = value.rstrip(b" \t")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            return  # 1xx: informational, the final answer follows (101 raises Upgrade)
        self.status = status
        self.version = parser.get_http_version()
        self._keep_alive = parser.should_keep_alive()
        head_only = self._head_only
        # RFC 9112 §6.3: without a length or chunked coding, the body ends at close.
        self._close_delimited = (
            not head_only and status not in (204, 304) and not _framed(self._headers)
        )
        self._phase = _BODY
        self._timer.push(self._timeout)
        _wake(self._head_waiter)
        if head_only:
            # llhttp cannot be told a response has no body (httptools never
            # returns "skip body"): finish here and use a new parser next time.
            self._fresh_parser = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self._phase != _BODY:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        _wake(self._waiter)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        if self._phase == _BODY:
            self._complete()

    # -- the exchange ------------------------------------------------------------------

    def start(self, head: bytes, *, head_only: bool, timeout: float, deadline: float) -> None:
        """Send a request head (its body, if any, follows through ``send_body``)."""
        assert self.transport is not None and self._phase == _IDLE
        if not self._fresh_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._fresh_parser = True
        self._phase = _HEAD
        self._head_only = head_only
        self._timeout = timeout
        self._error = None
        self.status = 0
        self.body_sent = True
        self.waiting_on_caller = False
        self._timer.start(deadline, self._expired)
        self.transport.write(head)

    def progress(self, *, waiting_on_caller: bool) -> None:
        """A request body chunk moved: the head deadline restarts (proxy.py's _IdleTimer rule)."""
        self.waiting_on_caller = waiting_on_caller
        if self._phase == _HEAD:
            self._timer.push(self._timeout)

    async def response_head(self) -> None:
        """Wait for the final response head; raises an UpstreamError."""
        if self._phase == _HEAD:
            waiter = self._head_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._head_waiter = None
        if self._phase == _BROKEN or (self._phase == _DONE and self._error is not None):
            assert self._error is not None
            raise self._error

    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    @property
    def complete(self) -> bool:
        """The whole response is in (the body is in ``take_body``)."""
        return self._phase == _DONE and self._error is None

    def take_body(self) -> bytes:
        """All body bytes buffered so far, at once (b"" if none)."""
        chunks = self._chunks
        self._buffered = 0
        if self._paused_reading:
            self._resume_reading()
        if not chunks:
            return b""
        if len(chunks) == 1:
            return chunks.popleft()
        body = b"".join(chunks)
        chunks.clear()
        return body

    async def read(self) -> bytes:
        """The next body chunk; b"" at the end; raises an UpstreamError on failure."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self._phase == _DONE:
                return b""
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunk = chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused_reading and self._buffered <= LOW_WATER:
            self._resume_reading()
        return chunk

    def _resume_reading(self) -> None:
        self._paused_reading = False
        self._timer.push(self._timeout)
        if self.transport is not None:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise self._error or UpstreamDisconnected("the upstream closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        while self._paused_writing and not self.lost:
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self.lost:
            raise self._error or UpstreamDisconnected("the upstream closed the connection")

    def finish(self) -> None:
        """The caller is done with this exchange: pool the connection or close it."""
        if (
            self._phase == _DONE
            and self._error is None
            and self._keep_alive
            and self.body_sent
            and not self._chunks
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._phase = _IDLE
            # Disarmed, not stopped: the handle stays for the next exchange's
            # deadline (a float store), instead of a call_at and a cancel per
            # request; an idle connection's handle fires once and finds nothing.
            self._timer.disarm()
            self._pool.release(self)
            return
        self.close()

    def close(self) -> None:
        """Drop the connection (an abandoned exchange fails whoever waits on it)."""
        self._timer.stop()
        self._chunks.clear()
        if self._phase < _DONE and self._phase != _IDLE:
            self._fail(UpstreamDisconnected("the exchange was abandoned"))
        self._phase = _BROKEN
        if self.transport is not None:
            self.transport.abort()

    # -- internals -------------------------------------------------------------------

    def _complete(self) -> None:
        self._phase = _DONE
        _wake(self._waiter)

    def _raise(self, exc: UpstreamError) -> UpstreamError:
        self._error = exc  # feed_data wraps callback errors; keep ours
        return exc

    def _fail(self, exc: BaseException) -> None:
        if self._phase == _BROKEN:
            return
        self._error = exc
        self._phase = _BROKEN
        _wake(self._head_waiter)
        _wake(self._waiter)
        if self.transport is not None:
            self.transport.abort()

    def _expired(self) -> None:
        phase = self._phase
        if phase == _HEAD:
            blame = self.waiting_on_caller
            self._fail(UpstreamTimeout("no response head in time", waiting_on_caller=blame))
        elif phase == _BODY:
            if self._paused_reading:
                # Waiting on the downstream, not on the upstream: not an idle gap.
                self._timer.start(self._loop.time() + self._timeout, self._expired)
            else:
                self._fail(UpstreamTimeout("the upstream body stalled"))
