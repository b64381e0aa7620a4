"""WebSockets through the gateway: the upgrade, the relay, and the caller's standing while open.

RFC 6455.  The proxy decides that a request is an upgrade and admits it like
any other request (gateway/proxy.py); from there this module owns the
connection:

* both ends are opened with a message-size limit, and every data, ping and
  pong frame is relayed as it came (text is not decoded: the receiving
  endpoint validates it, §8.1);
* a close frame is relayed with its code and reason, and echoed to the side
  that sent it (§5.5.1); a side that vanishes without one gets the other a
  1001 (caller gone) or 1014 (upstream gone);
* a message over ``limits.websocket_max_message_bytes`` closes both sides with
  1009 (§7.4.1); one of exactly that size passes;
* ``limits.websocket_idle_timeout`` seconds without a frame either way (pings
  and pongs count: they are how applications keep a socket alive) close both
  sides with 1001;
* the caller is re-admitted whenever the registry or the trust material
  changes, and when its certificate expires (``OpenSockets``): a client removed,
  disabled or revoked loses its sockets with 1008 within about a second of the
  gateway seeing the change.

Only ``accept_caller`` depends on aiohttp's server; the relay sees two
``WebSocketEnd`` objects, which aiohttp's client and server sockets both are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import yarl
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WSMessageNoDecodeText
from multidict import CIMultiDict, MultiMapping

from gateway.config import LimitsConfig
from gateway.errors import GatewayError, bad_gateway, gateway_timeout
from gateway.headers import header_key
from gateway.observability import RequestFacts

log = logging.getLogger("gateway.websocket")

# §5.5: a control frame carries at most 125 bytes, two of them the close code.
MAX_CLOSE_REASON = 123
# Seconds between checks of the registry and trust generations: a removed
# client's sockets close within this (plus the registry's own poll) of the change.
RECHECK_INTERVAL = 1.0
# Seconds each side gets to answer a close frame before its connection is cut.
CLOSE_TIMEOUT = 5.0
# Codes a close frame may carry (§7.4.1, §7.4.2, IANA registry: 1012-1014);
# 1004-1006 and 1015 are reserved and never sent.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    max_message_bytes: int = 4 * 1024 * 1024
    idle_timeout: float = 300.0

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> WebSocketLimits:
        return cls(limits.websocket_max_message_bytes, limits.websocket_idle_timeout)

    @property
    def reader_limit(self) -> int:
        # aiohttp refuses a frame of max_msg_size bytes or more (its check is
        # ">="), so it is told one more; the relay's own check (">") makes
        # "exactly the limit passes" hold whatever aiohttp does, and also
        # covers decompressed messages, which aiohttp checks with ">".
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
    """What the relay needs of one side (aiohttp's client and server sockets are both)."""

    async def receive(self) -> WSMessageNoDecodeText: ...

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None: ...

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool: ...


Recheck = Callable[[], Awaitable[Closing | None]]  # None: the caller is still admitted


def is_upgrade(headers: Mapping[str, str]) -> bool:
    return (
        headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in headers.get("Connection", "").lower()
    )


def refusal(error: GatewayError) -> Closing:
    """The close frame for a caller the re-check no longer admits."""
    # 1013 "Try Again Later" when the registry cannot answer: the client may
    # well be fine; anything else is a policy decision (1008, §7.4.1).
    code = 1013 if error.status == 503 else WSCloseCode.POLICY_VIOLATION
    return Closing(code, error.description)


def _relayable(code: int, reason: str) -> Closing:
    if code in _SENDABLE:
        return Closing(code, reason)
    # A close frame without a code (aiohttp reports 0) is answered as a normal
    # closure; any other code cannot be sent on.
    return Closing(WSCloseCode.OK) if code == 0 else Closing(WSCloseCode.PROTOCOL_ERROR)


_CALLER_GONE = Closing(WSCloseCode.GOING_AWAY, "the caller went away")
_UPSTREAM_GONE = Closing(WSCloseCode.BAD_GATEWAY, "the upstream connection was lost")


class Relay:
    """Frames both ways between a caller and an upstream socket, until one side ends it."""

    def __init__(self, caller: WebSocketEnd, upstream: WebSocketEnd, limits: WebSocketLimits):
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
        finally:
            self._idle.cancel()
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        ending = self._ending(done)
        # Both close handshakes at once; each waits at most CLOSE_TIMEOUT for
        # its answer (the sockets were opened with that timeout).
        await asyncio.gather(
            self._caller.close(code=ending.to_caller.code, message=ending.to_caller.reason_bytes()),
            self._upstream.close(
                code=ending.to_upstream.code, message=ending.to_upstream.reason_bytes()
            ),
            return_exceptions=True,
        )
        return ending

    def _ending(self, done: set[asyncio.Future[Any]]) -> Ending:
        if self._stopped.done():
            closing = self._stopped.result()
            return Ending(closing, closing, "gateway")
        pump = next(iter(done))
        assert isinstance(pump, asyncio.Task)
        if pump.cancelled() or pump.exception() is not None:
            # Sending failed: the side written to is gone.  Which one is not
            # known here, so both get the "lost" closing of the other.
            return Ending(_UPSTREAM_GONE, _CALLER_GONE, "gateway")
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
                if len(msg.data) > limit:
                    too_big = Closing(
                        WSCloseCode.MESSAGE_TOO_BIG, f"message over the {limit}-byte limit"
                    )
                    return Ending(too_big, too_big, side)
                await sink.send_frame(msg.data, kind)
            elif kind is WSMsgType.PING or kind is WSMsgType.PONG:
                await sink.send_frame(msg.data, kind)
            elif kind is WSMsgType.CLOSE:
                # Echoed to the sender (§5.5.1) and relayed to the other side.
                closing = _relayable(msg.data, msg.extra or "")
                return Ending(closing, closing, side)
            elif kind is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                # aiohttp refused a frame (too big, bad UTF-8 in a close
                # reason, protocol error) and has closed the sender with the
                # code; the other side learns why.
                closing = Closing(msg.data.code, f"the {side} sent a message the gateway refused")
                if msg.data.code == WSCloseCode.MESSAGE_TOO_BIG:
                    closing = Closing(msg.data.code, f"message over the {limit}-byte limit")
                return Ending(closing, closing, side)
            else:
                # CLOSED, CLOSING, ERROR: the connection ended without a close frame.
                lost = _CALLER_GONE if from_caller else _UPSTREAM_GONE
                return Ending(lost, lost, side)

    def _idled(self) -> None:
        timeout = self._limits.idle_timeout
        deadline = self._last_frame + timeout
        if self._loop.time() >= deadline:
            self.stop(Closing(WSCloseCode.GOING_AWAY, f"idle for {timeout:g} s"))
        else:
            # One timer per socket, moved only when it fires: a frame costs a
            # float store, not a timer reschedule.
            self._idle = self._loop.call_at(deadline, self._idled)


@dataclass(slots=True)
class _Watched:
    recheck: Recheck
    expires_at: float  # wall clock: the certificate's notAfter


class OpenSockets:
    """The open relays of one listener, re-admitted when their standing may have changed.

    One task for all of them, started with the first socket: each second it
    compares ``generation()`` (the registry and trust generations) with the
    last value seen, and only when it changed, or a certificate expired, does
    it re-run the admission of the sockets concerned.  No work per message.
    """

    def __init__(
        self, generation: Callable[[], Hashable], *, interval: float = RECHECK_INTERVAL
    ) -> None:
        self._generation = generation
        self._interval = interval
        self._watched: dict[Relay, _Watched] = {}
        self._seen: Hashable = generation()
        self._stale = False
        self._next_expiry = float("inf")
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(
        self, relay: Relay, recheck: Recheck, *, admitted_at: Hashable, expires_at: float
    ) -> None:
        """Follow ``relay``, admitted at generation ``admitted_at``, until ``forget``."""
        self._watched[relay] = _Watched(recheck, expires_at)
        self._next_expiry = min(self._next_expiry, expires_at)
        if admitted_at != self._generation():
            # Changed while the upgrade was in flight: the next tick re-checks.
            self._stale = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="websocket-recheck")

    def forget(self, relay: Relay) -> None:
        self._watched.pop(relay, None)

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self._interval)
            generation = self._generation()
            now = time.time()
            if generation != self._seen or self._stale:
                self._seen, self._stale = generation, False
                due = list(self._watched.items())
            elif now >= self._next_expiry:
                due = [(r, w) for r, w in self._watched.items() if w.expires_at <= now]
            else:
                continue
            verdicts = await asyncio.gather(
                *(watched.recheck() for _, watched in due), return_exceptions=True
            )
            for (relay, _), verdict in zip(due, verdicts, strict=True):
                if isinstance(verdict, BaseException):
                    # Fail closed: a caller whose standing cannot be checked is not kept.
                    log.error("WebSocket re-check failed", exc_info=verdict)
                    relay.stop(Closing(WSCloseCode.INTERNAL_ERROR, "the re-check failed"))
                elif verdict is not None:
                    log.info(
                        "WebSocket closed: caller no longer admitted",
                        extra={"event": "websocket_refused", "reason": verdict.reason},
                    )
                    relay.stop(verdict)
            expiries = [w.expires_at for w in self._watched.values() if w.expires_at > now]
            self._next_expiry = min(expiries, default=float("inf"))


def offered_protocols(headers: MultiMapping[str]) -> list[str]:
    values = headers.getall("Sec-WebSocket-Protocol", ())
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


async def connect_upstream(
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    *,
    protocols: list[str],
    within: float,
    limits: WebSocketLimits,
    info: RequestFacts,
) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open the upstream socket within ``within`` seconds, or raise the GatewayError the caller gets."""
    # aiohttp writes its own handshake fields; the caller's would be doubled.
    for name in list(headers):
        if header_key(name).startswith("sec-websocket-"):
            del headers[name]
    ws_url = "ws" + url[4:] if url.startswith("http") else url
    try:
        async with asyncio.timeout(within):
            return await session.ws_connect(
                yarl.URL(ws_url, encoded=True),
                headers=headers,
                protocols=protocols,
                autoping=False,
                autoclose=False,  # the relay answers close frames: it echoes their code
                max_msg_size=limits.reader_limit,
                decode_text=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
    except TimeoutError:
        info.upstream_error = "response timeout"
        raise gateway_timeout("the upstream did not answer in time") from None
    except aiohttp.WSServerHandshakeError as exc:
        info.upstream_error = f"WebSocket upgrade refused ({exc.status})"
        raise bad_gateway(f"the upstream refused the WebSocket upgrade ({exc.status})") from None
    except (aiohttp.ClientError, OSError) as exc:
        info.upstream_error = f"unreachable: {type(exc).__name__}"
        raise bad_gateway("the upstream is unreachable") from None


async def accept_caller(
    request: web.Request, protocol: str | None, limits: WebSocketLimits
) -> web.WebSocketResponse[bool]:
    """Answer the caller's upgrade (101) with the subprotocol the upstream chose."""
    caller: web.WebSocketResponse[bool] = web.WebSocketResponse(
        protocols=[protocol] if protocol else (),
        autoping=False,
        autoclose=False,
        max_msg_size=limits.reader_limit,
        decode_text=False,
        timeout=CLOSE_TIMEOUT,
    )
    await caller.prepare(request)
    return caller


async def relay(
    caller: WebSocketEnd,
    upstream: WebSocketEnd,
    limits: WebSocketLimits,
    sockets: OpenSockets,
    recheck: Recheck | None,
    *,
    admitted_at: Hashable = None,
    expires_at: float = float("inf"),
) -> Ending:
    """Relay until one side closes; re-admit the caller meanwhile when ``recheck`` is given."""
    pair = Relay(caller, upstream, limits)
    if recheck is not None:
        sockets.watch(pair, recheck, admitted_at=admitted_at, expires_at=expires_at)
    try:
        return await pair.run()
    finally:
        sockets.forget(pair)
        with contextlib.suppress(Exception):
            await upstream.close()
