"""The proxy's upstream hop: a lean pooled HTTP/1.1 client.

aiohttp's ClientSession cost ~46 µs of CPU per proxied keep-alive request
(bench/RESULTS.md: ClientRequest/ClientResponse objects, yarl, auto headers,
a connector acquire/release, a ClientTimeout and an ``asyncio.timeout`` per
request).  This client does the same job with one ``asyncio.Protocol`` per
upstream connection:

* an idle pool per (scheme, host, port), most recently used first, bounded
  (``limits.upstream_idle_connections``, the oldest idle one is closed when a
  release would pass the bound) and with an idle timeout kept by one pool
  timer (no timer per connection);
* the request head goes out as one ``bytes`` object, built by the caller;
* the answer is parsed by llhttp (``httptools``, the C parser uvloop's
  authors maintain): Content-Length, chunked and close-delimited bodies,
  HEAD/204/304 without a body, 1xx answers skipped;
* one ``TimerHandle`` per connection covers the response-head deadline and
  the idle gap between body chunks; it is re-armed lazily (a deadline field
  is moved forward, the handle is only replaced when it fires early);
* flow control both ways: upstream reading pauses while the relayed body
  waits downstream, and the request body waits for ``resume_writing``;
* a connection goes back to the pool only when its response was read to the
  end, the request body was sent in full and both sides allow keep-alive.

WebSocket upgrades (proxy.py) and outbound origination (gateway/outbound/)
still use aiohttp's client.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote

import httptools

# The limits aiohttp's client applied to upstream answers (max_line_size,
# max_field_size): an upstream cannot make the gateway buffer without bound.
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
# Relayed body bytes buffered before upstream reading pauses (aiohttp's client
# paused at 2 x 64 KiB): what a slow downstream can make the gateway hold.
HIGH_WATER = 128 * 1024
LOW_WATER = 32 * 1024
IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept (aiohttp's keepalive_timeout)
# Idle connections kept per origin (limits.upstream_idle_connections): NGINX's
# advice for its upstream `keepalive` (the docs' example is 64).  Without a
# bound, a burst of 2,000 callers left 2,000 idle sockets for IDLE_TIMEOUT.
MAX_IDLE_PER_ORIGIN = 64

_IDLE, _HEAD, _BODY, _DONE, _BROKEN = range(5)

# What a lost connection's parser is swapped for.  A parser holds its
# protocol's callbacks, so connection and parser form a reference cycle that
# only the cyclic collector frees, and after a burst thousands of closed
# connections (parser, buffers, headers) waited for a full collection
# (bench/RESULTS.md, "Bursts").  Dropping the parser lets reference counting
# free a connection as soon as its transport lets go of it.
_DETACHED_PARSER = httptools.HttpResponseParser(object())


class UpstreamError(Exception):
    """The upstream failed; ``label`` names the failure in the 502 description."""

    label = "UpstreamError"


class UpstreamUnreachable(UpstreamError):
    """No connection could be made (refused, DNS, TLS verification)."""

    label = "ClientConnectorError"


class UpstreamDisconnected(UpstreamError):
    label = "ServerDisconnectedError"


class InvalidResponse(UpstreamError):
    label = "ClientResponseError"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A deadline passed: connect, response head (blame in ``waiting_on_caller``) or body gap."""

    label = "ServerTimeoutError"

    def __init__(self, message: str, *, waiting_on_caller: bool = False) -> None:
        super().__init__(message)
        self.waiting_on_caller = waiting_on_caller


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a route's requests go, parsed once from its upstream URL."""

    scheme: str
    host: str
    port: int
    base_path: str  # the URL's path ("" or "/base"), prefixed to every target
    # Basic credentials from the URL's userinfo, as aiohttp's client sent them.
    authorization: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def parse_origin(url: str) -> Origin:
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    authorization = None
    if at:
        user, _, password = userinfo.partition(":")
        credentials = f"{unquote(user)}:{unquote(password)}".encode("latin-1")
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    return Origin(scheme, host, port, (slash + path).rstrip("/") if path else "", authorization)


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream, one exchange at a time."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_close_delimited",
        "_deadline",
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
        "idle_since",
        "key",
        "lost",
        "reason",
        "status",
        "transport",
        "version",
        "waiting_on_caller",
    )

    def __init__(self, pool: UpstreamPool, key: Origin) -> None:
        self._pool = pool
        self.key = key
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
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
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
            self._deadline = self._loop.time() + self._timeout
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
        if self._phase == _IDLE:
            self._pool.forget(self)
        elif self._phase == _BODY and self._close_delimited and exc is None:
            self._complete()  # the end of a close-delimited body (RFC 9112 §6.3)
        elif self._phase < _DONE:
            self._fail(UpstreamDisconnected("the upstream closed the connection"))
        self._stop_timer()
        # Never called from inside feed_data (asyncio defers connection_lost).
        self._parser = _DETACHED_PARSER
        self._fresh_parser = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        # llhttp strips the whitespace before a value, not after (aiohttp's rule).
        headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            return  # 1xx: informational, the final answer follows (101 raises Upgrade)
        self.status = status
        self.version = parser.get_http_version()
        self._keep_alive = parser.should_keep_alive()
        head_only = self._head_only
        self._close_delimited = False
        if not head_only and status not in (204, 304):
            framed = False
            for name, value in self._headers:
                lowered = name.lower()
                if lowered == b"content-length" or (
                    lowered == b"transfer-encoding" and b"chunked" in value.lower()
                ):
                    framed = True
                    break
            self._close_delimited = not framed
        self._phase = _BODY
        self._deadline = self._loop.time() + self._timeout
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
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
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        self._deadline = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self.transport.write(head)

    def progress(self, *, waiting_on_caller: bool) -> None:
        """A request body chunk moved: the head deadline restarts (proxy.py's _IdleTimer rule)."""
        self.waiting_on_caller = waiting_on_caller
        if self._phase == _HEAD:
            self._deadline = self._loop.time() + self._timeout

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
        self._deadline = self._loop.time() + self._timeout
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
        self._stop_timer()
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
            self._pool.release(self)
            return
        self.close()

    def close(self) -> None:
        """Drop the connection (an abandoned exchange fails whoever waits on it)."""
        self._stop_timer()
        self._chunks.clear()
        if self._phase < _DONE and self._phase != _IDLE:
            self._fail(UpstreamDisconnected("the exchange was abandoned"))
        self._phase = _BROKEN
        if self.transport is not None:
            self.transport.abort()

    # -- internals -------------------------------------------------------------------

    def _complete(self) -> None:
        self._phase = _DONE
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _raise(self, exc: UpstreamError) -> UpstreamError:
        self._error = exc  # feed_data wraps callback errors; keep ours
        return exc

    def _fail(self, exc: BaseException) -> None:
        if self._phase == _BROKEN:
            return
        self._error = exc
        self._phase = _BROKEN
        for waiter in (self._head_waiter, self._waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase not in (_HEAD, _BODY):
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        if phase == _HEAD:
            self._fail(
                UpstreamTimeout(
                    "no response head in time", waiting_on_caller=self.waiting_on_caller
                )
            )
        elif self._paused_reading:
            # Waiting on the downstream, not on the upstream: not an idle gap.
            self._deadline = now + self._timeout
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
        else:
            self._fail(UpstreamTimeout("the upstream body stalled"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamPool:
    """Idle keep-alive connections per origin, at most ``max_idle`` each, and the connect path.

    Reuse is last in, first out, and a release beyond the bound closes the
    connection idle the longest, as NGINX's upstream ``keepalive`` cache
    does.  Why that pair: the connection just released is the one least
    likely to be closed by the upstream's own keep-alive timeout as we send
    on it (the race RFC 9112 §9.3 warns of), LIFO keeps a steady load on the
    fewest connections so the rest age out through the idle timeout, and the
    one evicted is the one nearest that timeout anyway.  ``max_idle`` 0 keeps
    none: every connection is closed after its exchange.
    """

    def __init__(
        self, *, idle_timeout: float = IDLE_TIMEOUT, max_idle: int = MAX_IDLE_PER_ORIGIN
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        # Per origin, least recently used first: reuse pops the right end,
        # the bound and the sweeper take from the left.
        self._idle: dict[Origin, deque[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def idle_count(self, origin: Origin | None = None) -> int:
        """Idle connections held for ``origin`` (for every origin when None)."""
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(idle) for idle in self._idle.values())

    async def acquire(self, origin: Origin, connect_timeout: float) -> UpstreamConnection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return await self._connect(origin, connect_timeout)

    async def _connect(self, origin: Origin, connect_timeout: float) -> UpstreamConnection:
        if self._closed:
            raise UpstreamUnreachable("the upstream pool is closed")
        context: ssl.SSLContext | None = None
        if origin.tls:
            if self._ssl is None:
                # Certificate and host name verification on, system trust
                # store: what aiohttp's default ssl=True did.
                self._ssl = ssl.create_default_context()
            context = self._ssl
        conn = UpstreamConnection(self, origin)
        try:
            async with asyncio.timeout(connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UpstreamUnreachable(f"cannot connect to the upstream: {exc}") from None
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self._closed or self.max_idle <= 0:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        while len(idle) >= self.max_idle:
            idle.popleft().close()  # the longest idle goes (see the class docstring)
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.idle_timeout
        oldest: float | None = None
        for idle in self._idle.values():
            # Most recently used last: the stale ones are at the front.
            while idle and idle[0].idle_since <= cutoff:
                idle.popleft().close()
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = self.loop.call_at(oldest + self.idle_timeout, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
