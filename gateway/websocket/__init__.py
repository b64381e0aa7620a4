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

Layout: ``relay.py`` moves the frames, ``standing.py`` re-admits callers;
this module opens both ends.  Only ``accept_caller`` depends on aiohttp's
server (a ``web.Request``); the relay sees two ``WebSocketEnd`` objects, which
aiohttp's client and server sockets both are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from gateway.errors import bad_gateway, gateway_timeout
from gateway.headers import header_key
from gateway.pipeline.facts import RequestFacts
from gateway.websocket.relay import (
    CLOSE_TIMEOUT,
    Closing,
    Ending,
    Relay,
    WebSocketEnd,
    WebSocketLimits,
)
from gateway.websocket.standing import OpenSockets, Recheck, refusal

__all__ = [
    "Closing",
    "Ending",
    "OpenSockets",
    "Recheck",
    "WebSocketEnd",
    "WebSocketLimits",
    "accept_caller",
    "connect_upstream",
    "is_upgrade",
    "offered_protocols",
    "refusal",
    "relay",
]


def is_upgrade(headers: Mapping[str, str]) -> bool:
    return (
        headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in headers.get("Connection", "").lower()
    )


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
    """The upstream socket, opened within ``within`` seconds, or the GatewayError to answer."""
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
        return await pair.run()  # closes both sides, whatever ends it
    finally:
        sockets.forget(pair)

