"""The upstream end of a WebSocket: connect, then the client's opening handshake (RFC 6455 §4.1).

wsproto writes the handshake (Host, Upgrade, Connection, a fresh
Sec-WebSocket-Key, Sec-WebSocket-Version, the offered subprotocols) and
checks the answer (101, Sec-WebSocket-Accept, a subprotocol that was
offered); the gateway adds the request fields it computed for the upstream.
No extension is offered, so the upstream cannot turn on permessage-deflate
(RFC 7692) and every frame is relayed as it is, with no RSV bit set.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import h11  # wsproto writes the handshake with h11 and lets its errors through
from multidict import MultiMapping
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import ProtocolError

from gateway.errors import GatewayError, bad_gateway, gateway_timeout
from gateway.headers import HOP_BY_HOP, header_key
from gateway.upstream import parse_origin
from gateway.websocket.end import WebSocketEnd
from gateway.websocket.streams import StreamByteStream

# Forwarded fields wsproto writes itself: the caller's copies would be doubled.
_SET_BY_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version"})


class Facts(Protocol):
    """What the access log learns from the upgrade (gateway.pipeline.facts.RequestFacts)."""

    upstream_status: int | None
    upstream_error: str | None


@dataclass(slots=True, eq=False)
class UpstreamSocket:
    """An upstream WebSocket, open after its 101, ready for ``relay``."""

    stream: StreamByteStream
    end: WebSocketEnd  # wsproto's frame layer over ``stream``
    subprotocol: str | None  # what the upstream chose from the caller's offer, if anything

    def close(self) -> None:
        """Close the connection (``relay`` does; call it if the caller's upgrade fails first)."""
        self.stream.close()


@functools.cache
def _default_tls() -> ssl.SSLContext:
    # Certificate and host name verification on, the system trust store: what
    # gateway/upstream.py uses for https:// upstreams.
    return ssl.create_default_context()


async def connect_upstream(
    url: str,
    headers: Iterable[tuple[str, str]] | MultiMapping[str],
    *,
    protocols: list[str],
    within: float,
    info: Facts,
    ssl_context: ssl.SSLContext | None = None,
) -> UpstreamSocket:
    """The upstream socket, connected and upgraded within ``within`` seconds, or the GatewayError.

    ``url`` is the upstream's ``http(s)://`` or ``ws(s)://`` URL with the
    request target; ``headers`` the fields the gateway computed for it (its
    ``Host`` among them), of which the hop-by-hop ones and the caller's
    handshake fields are not sent; ``protocols`` the caller's offered
    subprotocols, in its order.  TLS (``https``, ``wss``) uses ``ssl_context``,
    or the system trust store.
    """
    scheme, _, rest = url.partition("://")
    tls = scheme in ("https", "wss")
    origin = parse_origin(("https" if tls else "http") + "://" + rest)
    authority, _, path = rest.partition("/")
    handshake = WSConnection(ConnectionType.CLIENT)
    try:
        request = _handshake_request(
            headers, "/" + path, protocols, authority.rpartition("@")[2], origin.authorization
        )
        head = handshake.send(request)
    except (h11.LocalProtocolError, UnicodeError, ProtocolError):
        # A field h11 will not write (a line break in a value, a name that is
        # not a token, a host name IDNA cannot encode): the caller's own, let
        # through by the gateway's parser.  Refused before connecting.
        info.upstream_error = "invalid forwarded header"
        raise GatewayError(400, "invalid_request", "a forwarded header cannot be sent") from None
    context = (ssl_context or _default_tls()) if tls else None
    stream: StreamByteStream | None = None
    try:
        async with asyncio.timeout(within):
            stream = await StreamByteStream.connect(origin.host, origin.port, tls=context)
            stream.write(head)
            return await _upgrade(stream, handshake, info)
    except BaseException as exc:
        if stream is not None:
            stream.close()
        if isinstance(exc, TimeoutError):
            # Connect and TLS handshake, or the wait for the 101: one bound.
            info.upstream_error = "response timeout" if stream else "connect timeout"
            raise gateway_timeout("the upstream did not answer in time") from None
        if isinstance(exc, OSError):  # ssl.SSLError among them
            info.upstream_error = f"unreachable: {type(exc).__name__}"
            raise bad_gateway("the upstream is unreachable") from None
        raise


def _handshake_request(
    headers: Iterable[tuple[str, str]] | MultiMapping[str],
    target: str,
    protocols: list[str],
    authority: str,
    authorization: str | None,
) -> Request:
    host = authority  # the URL's, unless the gateway computed a Host field
    extra: list[tuple[bytes, bytes]] = []
    fields = headers.items() if isinstance(headers, MultiMapping) else headers
    for name, value in fields:
        key = header_key(name)
        if key == "host":
            host = value
        elif key in HOP_BY_HOP or key in _SET_BY_HANDSHAKE or key == "sec-websocket-extensions":
            # Upgrade and Connection are wsproto's; offering the caller's
            # extensions would promise frames the relay does not transform.
            continue
        elif key == "sec-websocket-protocol" or (key == "authorization" and authorization):
            continue  # sent from ``protocols`` / the URL's credentials instead
        else:
            extra.append((name.encode("latin-1"), value.encode("utf-8", "surrogateescape")))
    if authorization:
        extra.append((b"Authorization", authorization.encode("latin-1")))
    return Request(host=host, target=target, extra_headers=extra, subprotocols=protocols)


async def _upgrade(
    stream: StreamByteStream, handshake: WSConnection, info: Facts
) -> UpstreamSocket:
    """Wait for the answer to the handshake ``stream`` was sent."""
    await stream.drain()
    while True:
        data = await stream.read()
        if not data:
            info.upstream_error = "closed before the WebSocket upgrade"
            raise bad_gateway("the upstream closed the connection before answering")
        try:
            handshake.receive_data(data)
            events = handshake.events()
            for event in events:
                if isinstance(event, AcceptConnection):
                    info.upstream_status = 101
                    connection = handshake.connection
                    assert isinstance(connection, Connection)
                    end = WebSocketEnd(stream, connection)
                    # Frames the upstream sent with its 101 (a greeting) were
                    # parsed in the same read: they are the relay's first events.
                    end.queue(events)
                    return UpstreamSocket(stream, end, event.subprotocol)
                if isinstance(event, RejectConnection):
                    info.upstream_status = event.status_code
                    info.upstream_error = f"WebSocket upgrade refused ({event.status_code})"
                    raise bad_gateway(
                        f"the upstream refused the WebSocket upgrade ({event.status_code})"
                    )
        except ProtocolError as exc:
            # An answer that is not HTTP, a wrong Sec-WebSocket-Accept, a
            # subprotocol or an extension nobody offered.
            info.upstream_error = f"invalid WebSocket upgrade answer: {exc}"
            raise bad_gateway("the upstream's WebSocket upgrade answer is invalid") from None
