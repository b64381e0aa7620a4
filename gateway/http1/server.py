"""The gateway's HTTP/1.1 server protocol on httptools (llhttp).

One protocol per connection owns the parser, keep-alive and every timer,
each armed and disarmed from its own parser events:

* the header-read deadline runs from the connection's start, and from the
  first byte after each answer, until a request head is complete (a client
  that connects and sends nothing, or trickles its head, is closed);
* the idle keep-alive timeout runs from each answer to the next byte;
* the downstream send timeout runs while the caller does not read
  (``pause_writing``): on TLS listeners the TLS layer owns it, on plain
  ones this protocol does;
* the request-body bounds are the pipeline's (gateway/request_body.py).

Requests are handed to the pipeline as ``gateway.pipeline.messages.Request``
one at a time; pipelined ones wait (reading paused).  Framing refusals
(llhttp's: smuggling shapes, bare LF, obs-fold, oversized heads) answer a JSON
400 and close, since what follows cannot be read as a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from gateway.errors import closing_json_error
from gateway.http1.connections import ConnectionSet
from gateway.http1.head import NO_BODY_STATUSES, closing_answer, head_of
from gateway.http1.reader import (
    Connection,
    HeadRefused,
    Http1Settings,
    RequestReader,
    UpgradeRequested,
    caller_keeps_alive,
)
from gateway.http1.upgrade import UpgradedStream
from gateway.http1.writer import ResponseWriter
from gateway.pipeline.messages import Handler, Request, Response
from gateway.timer import LazyTimer
from gateway.trust.forwarded import folded_certificate_hint

log = logging.getLogger("gateway.http1")


class Observing(Protocol):
    """The request metrics and access log (gateway/ops/observability.py Observer)."""

    def begin(self) -> None: ...

    def end(self, request: Request, response: Response, started: float) -> None:
        """Called once the answer went out, or the connection broke under it."""
        ...


# Admission against limits.max_connections (gateway/listener/connection_limit.py).
Gate = Callable[[], bool]


class Http1ServerProtocol(asyncio.Protocol):
    # One per open connection, most of them idle: slots, and no pipelining
    # queue until a caller pipelines (an empty deque is 600 bytes).
    __slots__ = (
        "_admit",
        "_close_after",
        "_connections",
        "_done",
        "_draining",
        "_handler",
        "_held",
        "_loop",
        "_observer",
        "_pending",
        "_reader",
        "_release",
        "_settings",
        "_task",
        "_timer",
        "_transport",
        "_upgraded",
        "_writer",
    )

    def __init__(
        self,
        handler: Handler,
        settings: Http1Settings,
        *,
        observer: Observing | None = None,
        connections: ConnectionSet | None = None,
        draining: Callable[[], bool] | None = None,
        admit: Gate | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._handler = handler
        self._settings = settings
        self._observer = observer
        self._draining = draining
        self._connections = connections
        self._admit = admit
        self._release = release
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader: RequestReader | None = None  # from connection_made
        self._writer: ResponseWriter | None = None
        # One deadline at a time (header read or keep-alive idle), see _arm.
        self._timer = LazyTimer(self._loop)
        # Requests parsed and waiting for the one in flight (pipelining).
        self._pending: deque[Request] | None = None
        self._task: asyncio.Task[None] | None = None
        self._upgraded: UpgradedStream | None = None
        self._close_after = False
        self._done: asyncio.Future[None] | None = None
        # Bytes after an upgrade request, until its answer says whose they are.
        self._held: bytes | None = None

    # -- connection ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self._transport = transport  # type: ignore[assignment]
        if self._admit is not None and not self._admit():
            self._admit = None  # not admitted: nothing to release
            self._release = None
            over = closing_json_error(503, "temporarily_unavailable", "too many open connections")
            over.headers.append(("Retry-After", "1"))
            self._transport = None
            write = getattr(transport, "write", None)
            if write is not None:
                write(closing_answer(over))
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._reader = RequestReader(
            self._settings,
            Connection(remote, transport, self._pause_reading, self._resume_reading),
            self._request_ready,
        )
        self._writer = ResponseWriter(transport, self._loop)  # type: ignore[arg-type]
        self._arm(self._settings.header_read_timeout)
        if self._connections is not None:
            self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self._timer.stop()
        if self._release is not None:
            self._release()
        if self._connections is not None:
            self._connections.discard(self)
        if self._writer is not None:
            self._writer.connection_lost()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.fail_body(ConnectionResetError("the caller closed the connection"))
            reader.detach()  # no cycle left: the connection is freed by refcount
        if self._upgraded is not None:
            self._upgraded.feed_eof()
        if self._task is not None and not self._task.done() and self._upgraded is None:
            # Nobody can read the answer: stop working on it (an upstream
            # exchange in flight is abandoned by its own cleanup).
            self._task.cancel()
        self._resolve_done()

    def data_received(self, data: bytes) -> None:
        if self._upgraded is not None:
            self._upgraded.feed(data)
            return
        if self._transport is None:
            return
        if self._held is not None:
            self._held += data
            if len(self._held) > _HELD_BYTES:
                self._pause_reading()
            return
        reader = self._reader
        assert reader is not None
        starting = reader.idle and self._task is None
        try:
            reader.feed(data)
        except UpgradeRequested as upgrade:
            # The bytes after an upgrade request are held until its answer
            # says whose they are: the upgraded protocol's (101) or the next request's.
            self._held = upgrade.rest
        except HeadRefused as refused:
            self._refuse_head(refused)
        else:
            if starting and self._task is None and not reader.idle:
                # The first bytes of a head after an answer, and the head is
                # not complete: the keep-alive wait is over, the header-read
                # deadline starts.  (A head that came whole, the usual case,
                # disarmed the deadline in _request_ready: no timer work.)
                self._arm(self._settings.header_read_timeout)

    def eof_received(self) -> bool | None:
        if self._upgraded is not None:
            self._upgraded.feed_eof()
            return True  # the relay decides when to close
        if self._reader is not None:
            self._reader.fail_body(ConnectionResetError("the caller ended its stream"))
        # A half-closed caller may still read the answer in flight.
        return self._task is not None

    def pause_writing(self) -> None:
        if self._writer is not None:
            self._writer.pause(self._settings.send_timeout)

    def resume_writing(self) -> None:
        if self._writer is not None:
            self._writer.resume()

    # -- shutdown (ConnectionSet) ----------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None

    def close_when_idle(self) -> None:
        self._close_after = True
        if self._task is None and self._transport is not None:
            self._transport.close()

    def cut(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    async def finished(self) -> None:
        if self._transport is None:
            return
        if self._done is None:
            self._done = self._loop.create_future()
        await self._done

    def _resolve_done(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- requests read off the connection (RequestReader) ----------------------

    def _request_ready(self, request: Request) -> None:
        self._timer.disarm()  # the head is in: no deadline while the pipeline runs
        if "Expect" in request.headers:
            request.send_continue = self._continue_for(request)
        if self._task is None:
            self._start(request)
        else:
            if self._pending is None:
                self._pending = deque()
            self._pending.append(request)
            self._pause_reading()

    # -- running requests --------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        started = time.perf_counter()
        if self._observer is not None:
            self._observer.begin()
        response: Response | None = None
        try:
            response = await self._handler(request)
            await self._send(request, response)
        except asyncio.CancelledError:
            if response is None:
                response = Response(499)
            raise
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            if response is None and self._writer is not None and not self._writer.started:
                response = closing_json_error(500, "server_error", "internal error")
                await self._send(request, response)
            elif self._transport is not None:
                self._transport.abort()
        finally:
            if self._observer is not None:
                self._observer.end(request, response or Response(500), started)
            self._next()

    async def _send(self, request: Request, response: Response) -> None:
        writer = self._writer
        assert writer is not None
        keep_alive = self._keep_alive(request, response)
        if not keep_alive:
            response.close = True
        if response.upgraded is not None and response.status == 101:
            held, self._held = self._held or b"", None
            stream = UpgradedStream(self._transport, writer, held)
            if self._transport is None:
                stream.feed_eof()  # the caller left before its 101: the relay ends at once
            else:
                writer.write(head_of(response, framing=b""))
            self._upgraded = stream
            response.close = True
            await response.upgraded(stream)
            return
        head_only = request.method == "HEAD" or response.status in NO_BODY_STATUSES
        await writer.send(response, request.version, keep_alive=keep_alive, head_only=head_only)

    def _keep_alive(self, request: Request, response: Response) -> bool:
        if response.close or self._close_after or self._transport is None:
            return False
        if self._connections is not None and self._connections.draining:
            return False
        if self._draining is not None and self._draining():
            return False  # SIGTERM: callers move their keep-alive traffic elsewhere
        return caller_keeps_alive(request)

    def _next(self) -> None:
        self._task = None
        if self._transport is None:
            return
        if self._upgraded is not None or self._writer is None or self._writer.closing:
            self._transport.close()
            return
        if self._held is not None:
            # The upgrade was declined: the held bytes are the next request.
            held, self._held = self._held, None
            self._resume_reading()
            if held:
                self.data_received(held)
                return
        if self._pending:
            self._start(self._pending.popleft())
            if not self._pending:
                self._resume_reading()
            return
        if self._close_after:
            self._transport.close()
            return
        self._resolve_done()
        if self._reader is not None and self._reader.idle:
            self._arm(self._settings.keepalive_timeout)
        else:
            self._arm(self._settings.header_read_timeout)

    def _continue_for(self, request: Request) -> Callable[[], None]:
        def send_continue() -> None:
            # RFC 9110 §10.1.1: only to HTTP/1.1 callers that may still send.
            if request.version >= (1, 1) and not request.content.ended and self._writer:
                self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        return send_continue

    def _refuse_head(self, refused: HeadRefused) -> None:
        """Answer a head the parser or our limits refused, then close."""
        description = refused.description
        if refused.parser_message:
            hint = folded_certificate_hint(description)
            if hint is not None:
                description = f"{description} ({hint})"
        self._held = None
        self._timer.stop()
        refusal = closing_json_error(400, "invalid_request", description)
        if self._task is not None:
            # An answer is in flight: the refusal goes after it (pipelining).
            self._close_after = True
            return
        if self._writer is not None and self._transport is not None:
            self._writer.write(closing_answer(refusal))
            self._transport.close()

    # -- helpers ---------------------------------------------------------------

    def _pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._pending:
            self._transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        """The deadline is now ``seconds`` away (gateway/timer.py).

        Moving it later (the keep-alive wait after each answer) stores a
        float; two ``call_later`` and three cancellations per request cost
        more than the whole framing stage (bench/RESULTS.md).
        """
        self._timer.start(self._loop.time() + seconds, self._expired)

    def _expired(self) -> None:
        if self._task is None and self._transport is not None:
            # Waiting for a head (or idle): no answer is possible, just close.
            self._transport.close()


_HELD_BYTES = 64 * 1024
