"""One caller socket, one upstream socket, frames relayed both ways until one side ends it (RFC 6455).

The relay sees two ``WebSocketEnd`` objects, which aiohttp's client and
server sockets both are; it does not know how either was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import WebSocketError, WSCloseCode, WSMsgType
from aiohttp.http_websocket import WSMessageNoDecodeText

from gateway.config import LimitsConfig

log = logging.getLogger("gateway.websocket")

# §5.5: a control frame carries at most 125 bytes, two of them the close code.
MAX_CLOSE_REASON = 123
# Seconds each side gets to answer a close frame before its connection is cut.
CLOSE_TIMEOUT = 5.0
# Codes a close frame may carry (§7.4.1, §7.4.2, IANA registry: 1012-1014);
# 1004-1006 and 1015 are reserved and never sent.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})
# What a failed write raises: the side written to is gone.
_SEND_FAILED = (ConnectionError, aiohttp.ClientError)


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    max_message_bytes: int = 4 * 1024 * 1024
    idle_timeout: float = 300.0

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> WebSocketLimits:
        return cls(limits.websocket_max_message_bytes, limits.websocket_idle_timeout)

    @property
    def reader_limit(self) -> int:
        """``max_msg_size`` for aiohttp's reader on both sides.

        aiohttp refuses a frame of max_msg_size bytes or more (its check is
        ">="), so it is told one more; the relay's own check (">") makes
        "exactly the limit passes" hold whatever aiohttp does, and also covers
        decompressed messages, which aiohttp checks with ">".
        """
        return self.max_message_bytes + 1


@dataclass(frozen=True, slots=True)
class Closing:
    """A close frame to send: code and reason."""

    code: int
    reason: str = ""

    def reason_bytes(self) -> bytes:
        # Cut at a character boundary: the reason must stay valid UTF-8 (§5.5.1).
        encoded = self.reason.encode("utf-8")[:MAX_CLOSE_REASON]
        return encoded.decode("utf-8", "ignore").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Ending:
    """How a relay ended: what each side was sent, and who ended it."""

    to_caller: Closing
    to_upstream: Closing
    by: str  # "caller", "upstream" or "gateway"


class WebSocketEnd(Protocol):
    """What the relay needs of one side."""

    async def receive(self) -> WSMessageNoDecodeText: ...

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None: ...

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool: ...


def relayable(code: int, reason: str) -> Closing:
    """The close frame that passes on a received close code."""
    if code in _SENDABLE:
        return Closing(code, reason)
    # A close frame without a code (aiohttp reports 0) is answered as a normal
    # closure; any other code cannot be sent on.
    return Closing(WSCloseCode.OK) if code == 0 else Closing(WSCloseCode.PROTOCOL_ERROR)


CALLER_GONE = Closing(WSCloseCode.GOING_AWAY, "the caller went away")
# 1014 "Bad Gateway" (IANA): a gateway lost or got nonsense from its upstream.
UPSTREAM_GONE = Closing(WSCloseCode.BAD_GATEWAY, "the upstream connection was lost")
SHUTTING_DOWN = Closing(WSCloseCode.GOING_AWAY, "the gateway is shutting down")


class Relay:
    """Frames both ways between a caller and an upstream socket, until one side ends it."""

    def __init__(
        self, caller: WebSocketEnd, upstream: WebSocketEnd, limits: WebSocketLimits
    ) -> None:
        self._caller = caller
        self._upstream = upstream
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._stopped: asyncio.Future[Closing] = self._loop.create_future()
        self._last_frame = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None

    def stop(self, closing: Closing) -> None:
        """End the relay from outside: both sides get ``closing``."""
        if not self._stopped.done():
            self._stopped.set_result(closing)

    async def run(self) -> Ending:
        pumps: set[asyncio.Future[Any]] = {
            asyncio.create_task(self._pump(self._caller, self._upstream, from_caller=True)),
            asyncio.create_task(self._pump(self._upstream, self._caller, from_caller=False)),
        }
        self._idle = self._loop.call_at(self._last_frame + self._limits.idle_timeout, self._idled)
        try:
            done, _ = await asyncio.wait(
                pumps | {self._stopped}, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # The gateway stops with this socket open.  aiohttp's server closes
            # the caller's connection right after cancelling the handler, so
            # only the upstream can still be told why.
            await self._stop_pumps(pumps)
            with contextlib.suppress(Exception):
                await self._upstream.close(
                    code=SHUTTING_DOWN.code, message=SHUTTING_DOWN.reason_bytes()
                )
            raise
        await self._stop_pumps(pumps)
        ending = self._ending(done)
        await self._close(ending)
        return ending

    async def _stop_pumps(self, pumps: set[asyncio.Future[Any]]) -> None:
        assert self._idle is not None
        self._idle.cancel()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _close(self, ending: Ending) -> None:
        # Both close handshakes at once; each waits at most CLOSE_TIMEOUT for
        # its answer (the sockets were opened with that timeout).
        to_caller, to_upstream = ending.to_caller, ending.to_upstream
        await asyncio.gather(
            self._caller.close(code=to_caller.code, message=to_caller.reason_bytes()),
            self._upstream.close(code=to_upstream.code, message=to_upstream.reason_bytes()),
            return_exceptions=True,
        )

    def _ending(self, done: set[asyncio.Future[Any]]) -> Ending:
        if self._stopped.done():
            closing = self._stopped.result()
            return Ending(closing, closing, "gateway")
        pump = next(iter(done))
        error = pump.exception()
        if error is not None:
            # A bug, not a peer: _pump returns an Ending for everything peers do.
            log.error("WebSocket relay failed", exc_info=error)
            failed = Closing(WSCloseCode.INTERNAL_ERROR, "the gateway failed")
            return Ending(failed, failed, "gateway")
        result = pump.result()
        assert isinstance(result, Ending)
        return result

    async def _pump(self, source: WebSocketEnd, sink: WebSocketEnd, *, from_caller: bool) -> Ending:
        side = "caller" if from_caller else "upstream"
        limit = self._limits.max_message_bytes
        while True:
            msg = await source.receive()
            kind = msg.type
            self._last_frame = self._loop.time()
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                # Text stays undecoded (decode_text=False): len() counts UTF-8 bytes.
                if len(msg.data) > limit:
                    too_big = Closing(
                        WSCloseCode.MESSAGE_TOO_BIG, f"message over the {limit}-byte limit"
                    )
                    return Ending(too_big, too_big, side)
            elif kind is WSMsgType.CLOSE:
                # Echoed to the sender (§5.5.1) and relayed to the other side.
                closing = relayable(msg.data, msg.extra or "")
                return Ending(closing, closing, side)
            elif kind is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                # aiohttp refused a frame (too big, a protocol error) and has
                # closed the sender with the code; the other side learns why.
                code = msg.data.code
                reason = f"the {side} broke the WebSocket protocol"
                if code == WSCloseCode.MESSAGE_TOO_BIG:
                    reason = f"message over the {limit}-byte limit"
                return Ending(Closing(code, reason), Closing(code, reason), side)
            elif kind is not WSMsgType.PING and kind is not WSMsgType.PONG:
                # CLOSED, CLOSING, ERROR: the connection ended without a close frame.
                lost = CALLER_GONE if from_caller else UPSTREAM_GONE
                return Ending(lost, lost, side)
            try:
                await sink.send_frame(msg.data, kind)
            except _SEND_FAILED:
                lost = UPSTREAM_GONE if from_caller else CALLER_GONE
                return Ending(lost, lost, "upstream" if from_caller else "caller")

    def _idled(self) -> None:
        timeout = self._limits.idle_timeout
        deadline = self._last_frame + timeout
        if self._loop.time() >= deadline:
            self.stop(Closing(WSCloseCode.GOING_AWAY, f"idle for {timeout:g} s"))
        else:
            # One timer per socket, moved only when it fires: a frame costs a
            # float store, not a timer reschedule.
            self._idle = self._loop.call_at(deadline, self._idled)
