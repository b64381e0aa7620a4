"""WebSockets through the gateway: the upgrade, the relay, and the caller's standing while open.

RFC 6455, on wsproto at both ends.  The proxy decides that a request is an
upgrade and admits it like any other request (gateway/proxy.py); from there
this package owns the connection:

* the upstream socket is opened first (``connect_upstream``: TCP or TLS and
  the client's handshake), and only then is the caller answered, with the
  101 fields of ``accept_headers`` (the subprotocol the upstream chose);
* the caller's connection after the 101 (a ``ByteStream``) and the
  upstream's are each a wsproto frame connection; messages, pings and pongs
  are relayed as they came, text as text (wsproto checks its UTF-8, §8.1);
* a close frame is relayed with its code and reason, and echoed to the side
  that sent it (§5.5.1); a side that vanishes without one gets the other a
  1001 (caller gone) or 1014 (upstream gone);
* a message over ``limits.websocket_max_message_bytes`` closes both sides with
  1009 (§7.4.1); one of exactly that size passes.  No extension is
  negotiated at either end, so the limit counts the bytes on the wire;
* ``limits.websocket_idle_timeout`` seconds without a frame either way (pings
  and pongs count: they are how applications keep a socket alive) close both
  sides with 1001;
* the caller is re-admitted whenever the registry or the trust material
  changes, and when its certificate expires (``OpenSockets``): a client removed,
  disabled or revoked loses its sockets with 1008 within about a second of the
  gateway seeing the change;
* a gateway stopping closes every open socket with 1001 to both ends
  (``OpenSockets.close_all``).

Layout: ``handshake.py`` the caller's handshake, ``upstream.py`` the
upstream's, ``end.py`` one wsproto connection over a byte stream,
``relay.py`` moves messages between two ends, ``standing.py`` re-admits
callers, ``streams.py`` a ``ByteStream`` over asyncio streams.
"""

from __future__ import annotations

from collections.abc import Hashable

from wsproto.connection import Connection, ConnectionType

from gateway.pipeline.messages import ByteStream
from gateway.websocket.end import CLOSE_TIMEOUT, Closing, WebSocketEnd
from gateway.websocket.handshake import (
    accept_headers,
    check_upgrade,
    is_upgrade,
    offered_protocols,
)
from gateway.websocket.relay import SHUTTING_DOWN, Ending, Relay, WebSocketLimits
from gateway.websocket.standing import OpenSockets, Recheck, refusal
from gateway.websocket.streams import StreamByteStream
from gateway.websocket.upstream import UpstreamSocket, connect_upstream

__all__ = [
    "CLOSE_TIMEOUT",
    "SHUTTING_DOWN",
    "Closing",
    "Ending",
    "OpenSockets",
    "Recheck",
    "StreamByteStream",
    "UpstreamSocket",
    "WebSocketLimits",
    "accept_headers",
    "check_upgrade",
    "connect_upstream",
    "is_upgrade",
    "offered_protocols",
    "refusal",
    "relay",
]


async def relay(
    caller: ByteStream,
    upstream: UpstreamSocket,
    limits: WebSocketLimits,
    sockets: OpenSockets,
    recheck: Recheck | None,
    *,
    admitted_at: Hashable = None,
    expires_at: float = float("inf"),
) -> Ending:
    """Relay between the caller's upgraded connection and ``upstream`` until one side closes.

    ``caller`` is the connection after the 101 (what the listener protocol
    hands to ``Response.upgraded``); the protocol closes it once this
    returns.  The upstream's connection is closed here.  The caller is
    re-admitted meanwhile when ``recheck`` is given.
    """
    # The handshake is the proxy's, so the frame layer starts here (§4.2.2:
    # the connection is open once the 101 is sent), with no extension.
    pair = Relay(WebSocketEnd(caller, Connection(ConnectionType.SERVER)), upstream.end, limits)
    sockets.watch(pair, recheck, admitted_at=admitted_at, expires_at=expires_at)
    try:
        return await pair.run()  # both close handshakes done, whatever ended it
    finally:
        sockets.forget(pair)
        upstream.close()
