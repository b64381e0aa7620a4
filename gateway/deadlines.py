"""Header-read deadline: a connection must deliver each request head in time.

aiohttp bounds idle keep-alive time but not the time a client takes to send
a request head, so a slowloris client that trickles header bytes, or one that
connects and sends nothing, holds a connection (and a TLS session) forever.
Each connection's protocol is wrapped: a timer runs from the connection's
start, and from the first byte after each response, until the request's
handler starts; if it fires first, the connection is closed.

The same wrapper caps the number of open connections per listener
(``limits.max_connections``): each idle keep-alive TLS connection costs
memory (TLS buffers, parser, handler) until its timeout, so without a cap a
caller that opens connections faster than they time out exhausts memory.
A connection over the cap gets a 503 and is closed right after its handshake.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from gateway.errors import GatewayError
from gateway.forwarded import folded_certificate_hint
from gateway.framing import SERVER_NAME
from gateway.throttle import ThrottledWarning

log = logging.getLogger("gateway")

_WAITING, _IN_REQUEST, _IDLE = 0, 1, 2

_OVER_CAPACITY_BODY = json.dumps(
    {"error": "temporarily_unavailable", "error_description": "too many open connections"}
).encode()
_OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nServer: " + SERVER_NAME.encode() + b"\r\n"
    b"Content-Length: " + str(len(_OVER_CAPACITY_BODY)).encode() + b"\r\n\r\n"
) + _OVER_CAPACITY_BODY


class ConnectionLimit:
    """Open connections of one listener, against ``limits.max_connections``."""

    __slots__ = ("_warn", "admitted", "limit", "open", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.admitted = 0  # completed handshakes let in, for /metrics
        self._warn = ThrottledWarning(log)

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            self._warn.warning(
                "connection refused: limits.max_connections reached",
                event="connection_refused",
                limit=self.limit,
            )
            return False
        self.open += 1
        self.admitted += 1
        return True

    def release(self) -> None:
        self.open -= 1


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering malformed requests in JSON.

    The parser refuses bad framing, oversized heads and garbage before any
    handler runs, and aiohttp answers those in text/plain; callers of this
    gateway get every error in one shape: ``{"error", "error_description"}``.
    These answers never reach the apps' ``on_response_prepare`` hook, so the
    ``Server`` product name (framing.answer_policy) is set here; aiohttp would
    fill in its version banner.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response is under way: aiohttp cuts it
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            error, description = "server_error", "internal error"
        else:
            error = "invalid_request"
            detail = _printable(getattr(exc, "message", None) or message or "")
            description = f"malformed request: {detail}" if detail else "malformed request"
            hint = folded_certificate_hint(detail)
            if hint is not None:
                description = f"{description} ({hint})"
        response = GatewayError(status, error, description).response()
        response.headers[hdrs.SERVER] = SERVER_NAME
        response.force_close()
        return response


def _printable(text: str, limit: int = 200) -> str:
    cleaned = "".join(ch if " " <= ch <= "~" else " " for ch in str(text))
    return " ".join(cleaned.split())[:limit]


def json_error_handlers(server: Server, options: dict[str, Any]) -> Callable[[], RequestHandler]:
    """A factory of aiohttp connection handlers that answer malformed requests in JSON.

    ``options`` are the keyword arguments the runner was given (header limits,
    keep-alive timeout): the handler takes the same ones.
    """
    loop = asyncio.get_running_loop()

    def handler() -> RequestHandler:
        return JsonErrorRequestHandler(server, loop=loop, **options)

    return handler


class HeaderDeadlineProtocol(asyncio.Protocol):
    """Wraps aiohttp's RequestHandler; forwards every protocol event to it."""

    __slots__ = (
        "_admitted",
        "_inner",
        "_loop",
        "_state",
        "_timeout",
        "_timer",
        "_transport",
        "gate",
    )

    def __init__(
        self, inner: asyncio.Protocol, timeout: float, *, gate: ConnectionLimit | None = None
    ) -> None:
        self._inner = inner
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._state = _WAITING
        self._admitted = False
        self.gate = gate  # counted from connection_made: after the TLS handshake

    # -- lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.gate is not None:
            if not self.gate.admit():
                # aiohttp never sees this connection: no handler, no parser.
                # Duck-typed: uvloop's TLS transport is not an asyncio.WriteTransport.
                write = getattr(transport, "write", None)
                if write is not None:
                    write(_OVER_CAPACITY)
                transport.close()
                return
            self._admitted = True
        self._transport = transport
        self._arm()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # refused in connection_made: the handler never started
        if self._admitted:
            self._admitted = False
            assert self.gate is not None
            self.gate.release()
        self._disarm()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if self._state == _IDLE:
            self._state = _WAITING
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
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
