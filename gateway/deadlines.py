"""Header-read deadline: a connection must deliver each request head in time.

aiohttp bounds idle keep-alive time but not the time a client takes to send
a request head, so a slowloris client that trickles header bytes, or one that
connects and sends nothing, holds a connection (and a TLS session) forever.
Each connection's protocol is wrapped: a timer runs from the connection's
start, and from the first byte after each response, until the request's
handler starts; if it fires first, the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

_WAITING, _IN_REQUEST, _IDLE = 0, 1, 2


class HeaderDeadlineProtocol(asyncio.Protocol):
    """Wraps aiohttp's RequestHandler; forwards every protocol event to it."""

    __slots__ = ("_inner", "_loop", "_state", "_timeout", "_timer", "_transport")

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._state = _WAITING

    # -- lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._arm()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            self._state = _WAITING
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- request boundaries (called by the middleware) --------------------------

    def request_started(self) -> None:
        self._state = _IN_REQUEST
        self._disarm()

    def request_finished(self) -> None:
        self._state = _IDLE

    def _arm(self) -> None:
        self._disarm()
        self._timer = self._loop.call_later(self._timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._state == _WAITING and self._transport is not None:
            # No response is possible before the head is parsed: just close.
            self._transport.close()


@web.middleware
async def request_boundaries(request: web.Request, handler: Any) -> web.StreamResponse:
    transport = request.transport
    watchdog = transport.get_protocol() if transport is not None else None
    if isinstance(watchdog, HeaderDeadlineProtocol):
        watchdog.request_started()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            watchdog.request_finished()
    result: web.StreamResponse = await handler(request)
    return result


class DeadlineSite(web.TCPSite):
    """A TCPSite whose connections carry a header-read deadline."""

    def __init__(
        self, runner: web.BaseRunner, *args: Any, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self._header_timeout = header_timeout

    async def start(self) -> None:
        # BaseSite.start registers the site; TCPSite.start would bind with the
        # bare handler factory, so bind here with the wrapped one instead.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        timeout = self._header_timeout

        def factory() -> asyncio.Protocol:
            return HeaderDeadlineProtocol(server(), timeout)

        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            # The handshake counts against the same budget as the request head.
            ssl_handshake_timeout=timeout if self._ssl_context is not None else None,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
