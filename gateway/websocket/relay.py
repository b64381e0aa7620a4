"""One caller end, one upstream end, messages relayed both ways until one side ends it (RFC 6455).

The relay sees two ``WebSocketEnd`` objects (gateway/websocket/end.py); it
does not know how either was opened.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

from gateway.listener.config import LimitsConfig
from gateway.websocket.end import Closing, WebSocketEnd

log = logging.getLogger("gateway.websocket")


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    max_message_bytes: int = 4 * 1024 * 1024
    idle_timeout: float = 300.0

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> WebSocketLimits:
        return cls(limits.websocket_max_message_bytes, limits.websocket_idle_timeout)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a relay ended: what each side was sent, and who ended it."""

    to_caller: Closing
    to_upstream: Closing
    by: str  # "caller", "upstream" or "gateway"


CALLER_GONE = Closing(CloseReason.GOING_AWAY, "the caller went away")
# 1014 "Bad Gateway" (IANA registry): a gateway lost or got nonsense from its upstream.
UPSTREAM_GONE = Closing(1014, "the upstream connection was lost")
SHUTTING_DOWN = Closing(CloseReason.GOING_AWAY, "the gateway is shutting down")
FAILED = Closing(CloseReason.INTERNAL_ERROR, "the gateway failed")


class Relay:
    """Messages both ways between a caller and an upstream end, until one side ends it.

    Messages are relayed whole: a message is gathered (at most the size
    limit) before it is sent on, so the other side never sees part of one
    that turns out to be over the limit.  Fragments are not kept (an
    intermediary may refragment when no extension is in use, §5.4); pings and
    pongs pass through as they came, so each end's ping is answered by the
    other end's pong, and both count as traffic for the idle timer.
    """

    def __init__(
        self, caller: WebSocketEnd, upstream: WebSocketEnd, limits: WebSocketLimits
    ) -> None:
        self._caller = caller
        self._upstream = upstream
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._stopped: asyncio.Future[Closing] = self._loop.create_future()
        # Done once run() returned, whatever ended it (OpenSockets.close_all waits on it).
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self._last_frame = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None

    def stop(self, closing: Closing) -> None:
        """End the relay from outside: both sides get ``closing``."""
        if not self._stopped.done():
            self._stopped.set_result(closing)

    async def run(self) -> Ending:
        try:
            return await self._run()
        finally:
            if not self.finished.done():
                self.finished.set_result(None)

    async def _run(self) -> Ending:
        pumps = [
            asyncio.create_task(self._pump(self._caller, self._upstream, from_caller=True)),
            asyncio.create_task(self._pump(self._upstream, self._caller, from_caller=False)),
        ]
        self._idle = self._loop.call_at(self._last_frame + self._limits.idle_timeout, self._idled)
        waiting: list[asyncio.Future[Any]] = [*pumps, self._stopped]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The gateway stops without OpenSockets.close_all, or its bound ran
            # out: both ends are still told why, without waiting for answers.
            await self._stop_pumps(pumps)
            self._caller.send_close_now(SHUTTING_DOWN)
            self._upstream.send_close_now(SHUTTING_DOWN)
            raise
        # Decided before the pumps are stopped: stop() may be called meanwhile.
        ending = self._ending(pumps)
        await self._stop_pumps(pumps)
        # Both close handshakes at once; each waits at most CLOSE_TIMEOUT.
        for failure in await asyncio.gather(
            self._caller.close(ending.to_caller),
            self._upstream.close(ending.to_upstream),
            return_exceptions=True,
        ):
            if failure is not None:
                log.error("WebSocket close failed", exc_info=failure)
        return ending

    async def _stop_pumps(self, pumps: list[asyncio.Task[Ending]]) -> None:
        if self._idle is not None:
            self._idle.cancel()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

    def _ending(self, pumps: list[asyncio.Task[Ending]]) -> Ending:
        # Several may be done in the same loop turn: a peer's close frame
        # first (its echo is owed, §5.5.1), the caller's before the upstream's,
        # then a stop from outside, then a failure.
        finished = [task for task in pumps if task.done()]
        for task in finished:
            if task.exception() is None:
                return task.result()
        if self._stopped.done():
            closing = self._stopped.result()
            return Ending(closing, closing, "gateway")
        # A bug, not a peer: _pump returns an Ending for everything peers do.
        log.error("WebSocket relay failed", exc_info=finished[0].exception())
        return Ending(FAILED, FAILED, "gateway")

    async def _pump(self, source: WebSocketEnd, sink: WebSocketEnd, *, from_caller: bool) -> Ending:
        side = "caller" if from_caller else "upstream"
        limit = self._limits.max_message_bytes
        parts: list[Any] = []  # the pieces of the message being gathered
        size = 0  # its bytes so far (text: UTF-8 bytes, as it came on the wire)
        while True:
            event = await source.next_event()
            self._last_frame = self._loop.time()
            if event is None:
                # The connection ended without a close frame.
                lost = CALLER_GONE if from_caller else UPSTREAM_GONE
                return Ending(lost, lost, side)
            if isinstance(event, Message):
                data = event.data
                size += len(data.encode("utf-8")) if isinstance(data, str) else len(data)
                if size > limit:
                    # §7.4.1: 1009, a message too big to process.
                    too_big = Closing(
                        CloseReason.MESSAGE_TOO_BIG, f"message over the {limit}-byte limit"
                    )
                    return Ending(too_big, too_big, side)
                if not event.message_finished:
                    parts.append(data)
                    continue
                if parts:
                    parts.append(data)
                    data = "".join(parts) if isinstance(data, str) else b"".join(parts)
                    parts = []
                size = 0
                out: Any = TextMessage(data) if isinstance(data, str) else BytesMessage(data)
            elif isinstance(event, Ping):
                out = Ping(event.payload)
            elif isinstance(event, Pong):
                out = Pong(event.payload)
            elif isinstance(event, CloseConnection):
                if source.refused(event):
                    # wsproto refused a frame (1002, or 1007 for invalid UTF-8);
                    # the sender is failed with the code, the other side learns why.
                    broke = Closing(event.code, f"the {side} broke the WebSocket protocol")
                    return Ending(broke, broke, side)
                # Echoed to the sender (§5.5.1) and relayed to the other side.
                closing = Closing(int(event.code), event.reason or "")
                return Ending(closing, closing, side)
            else:
                continue  # nothing else comes after the handshake
            try:
                await sink.send(out)
            except OSError:
                lost = UPSTREAM_GONE if from_caller else CALLER_GONE
                return Ending(lost, lost, "upstream" if from_caller else "caller")

    def _idled(self) -> None:
        timeout = self._limits.idle_timeout
        deadline = self._last_frame + timeout
        if self._loop.time() >= deadline:
            self.stop(Closing(CloseReason.GOING_AWAY, f"idle for {timeout:g} s"))
        else:
            # One timer per socket, moved only when it fires: a frame costs a
            # float store, not a timer reschedule.
            self._idle = self._loop.call_at(deadline, self._idled)
