"""Sending one answer on an HTTP/1.1 connection: framing, backpressure, the send timeout.

Framing (RFC 9112 §6): a whole body gets ``Content-Length``; a stream with
an announced length keeps it; any other stream is chunked for HTTP/1.1
callers and delimited by closing the connection for HTTP/1.0 ones.  The head
goes out with the first body bytes: one write, one TLS record, where the
answer is small.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from gateway.http1.head import response_head
from gateway.pipeline.messages import Response, StreamCut

log = logging.getLogger("gateway.http1")


class ResponseWriter:
    __slots__ = ("_loop", "_paused", "_send_timer", "_transport", "_waiter", "closing", "started")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self.started = False  # a head went out for the answer in flight
        self.closing = False  # the connection must close after it

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def drain(self) -> None:
        if not self._paused:
            return
        if self._waiter is None:
            self._waiter = self._loop.create_future()
        await self._waiter

    # -- the protocol's flow control events --------------------------------------

    def pause(self, send_timeout: float | None) -> None:
        self._paused = True
        if send_timeout is not None and self._send_timer is None:
            # NGINX's send_timeout: a caller that stops reading is dropped,
            # which releases the upstream connection its answer holds.
            self._send_timer = self._loop.call_later(send_timeout, self._send_expired)

    def resume(self) -> None:
        self._paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._wake(None)

    def connection_lost(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._wake(ConnectionResetError("the caller closed the connection"))

    def _wake(self, exc: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def _send_expired(self) -> None:
        self._send_timer = None
        log.info("caller stopped reading for limits.send_timeout: connection aborted")
        self._transport.abort()

    # -- one answer ------------------------------------------------------------

    async def send(
        self, response: Response, version: tuple[int, int], *, keep_alive: bool, head_only: bool
    ) -> None:
        self.started = False
        stream = response.stream
        close_field = b"" if keep_alive else b"Connection: close\r\n"
        if version < (1, 1) and keep_alive:
            close_field = b"Connection: keep-alive\r\n"  # RFC 9112 §9.3 (HTTP/1.0 opt-in)
        if stream is None:
            length = (
                response.length if head_only and response.length is not None else len(response.body)
            )
            framing = (
                b""
                if response.status in (204, 304) or response.status < 200
                else (b"Content-Length: %d\r\n" % length)
            )
            head = response_head(
                response.status,
                response.reason,
                response.headers,
                framing=framing,
                keep_alive_field=close_field,
            )
            self.started = True
            if head_only or not response.body:
                self._transport.write(head)
            else:
                self._transport.write(head + response.body)
                response.sent_bytes = len(response.body)
            if not keep_alive:
                self.closing = True
            return
        chunked = False
        if response.length is not None:
            framing = b"Content-Length: %d\r\n" % response.length
        elif head_only:
            framing = b""
        elif version >= (1, 1):
            framing, chunked = b"Transfer-Encoding: chunked\r\n", True
        else:
            framing, keep_alive = b"", False  # ends when the connection closes
            close_field = b"Connection: close\r\n"
        if not keep_alive:
            self.closing = True
        head = response_head(
            response.status,
            response.reason,
            response.headers,
            framing=framing,
            keep_alive_field=close_field,
        )
        try:
            if head_only:
                self.started = True
                self._transport.write(head)
                return
            await self._stream(response, stream, head, chunked)
        finally:
            # An abandoned stream releases what it holds (an upstream
            # connection) now, not when the collector finds it.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _stream(
        self, response: Response, stream: AsyncIterator[bytes], head: bytes, chunked: bool
    ) -> None:
        pending = head
        try:
            async for chunk in stream:
                if not chunk:
                    # An empty chunk asks for the head now: a slow stream's
                    # caller must see the answer begin (server-sent events).
                    if pending:
                        self._transport.write(pending)
                        pending, self.started = b"", True
                    continue
                response.sent_bytes += len(chunk)
                data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
                if pending:
                    data, pending = pending + data, b""
                    self.started = True
                self._transport.write(data)
                if self._paused:
                    await self.drain()
        except StreamCut:
            # The caller got a head (or will get nothing): the only honest
            # signal left is to cut the connection, so it sees a truncated answer.
            self.closing = True
            self._transport.abort()
            return
        tail = b"0\r\n\r\n" if chunked else b""
        if pending or tail:
            self.started = True
            self._transport.write(pending + tail)
