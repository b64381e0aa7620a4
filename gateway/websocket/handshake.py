"""The caller's opening handshake (RFC 6455 §4.2): is it one, is it valid, and the 101's fields.

The gateway's HTTP/1.1 protocol parsed the request; the proxy decides it is
an upgrade (``is_upgrade``), refuses a malformed one before any upstream is
contacted (``check_upgrade``), and answers with the fields ``accept_headers``
computes once the upstream accepted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from multidict import MultiMapping
from wsproto.utilities import generate_accept_token

from gateway.errors import GatewayError
from gateway.websocket.upstream import UpstreamSocket

# §4.1: the only version this server speaks; §4.4: named in a 426.
WEBSOCKET_VERSION = "13"


def is_upgrade(headers: Mapping[str, str]) -> bool:
    return (
        headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in headers.get("Connection", "").lower()
    )


def offered_protocols(headers: MultiMapping[str]) -> list[str]:
    values = headers.getall("Sec-WebSocket-Protocol", ())
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def check_upgrade(headers: Mapping[str, str]) -> None:
    """Raise the GatewayError a server answers to an invalid opening handshake (§4.2.1)."""
    version = headers.get("Sec-WebSocket-Version", "").strip()
    if version != WEBSOCKET_VERSION:
        # §4.4: 426 naming the versions this server supports.
        raise GatewayError(
            426,
            "invalid_request",
            "the WebSocket version must be 13",
            {"Sec-WebSocket-Version": WEBSOCKET_VERSION, "Upgrade": "websocket"},
        )
    if _key(headers) is None:
        raise GatewayError(
            400, "invalid_request", "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.1)"
        )


def accept_headers(headers: Mapping[str, str], upstream: UpstreamSocket) -> list[tuple[str, str]]:
    """The fields of the 101 that completes the caller's handshake (§4.2.2).

    The subprotocol is the one the upstream chose (wsproto checked that the
    caller offered it).  No Sec-WebSocket-Extensions: none was offered
    upstream, so none can be agreed here either, and permessage-deflate
    (RFC 7692) is off on both connections.
    """
    key = _key(headers)
    if key is None:
        raise GatewayError(400, "invalid_request", "Sec-WebSocket-Key is missing or invalid")
    fields = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key.encode("ascii")).decode("ascii")),
    ]
    if upstream.subprotocol is not None:
        fields.append(("Sec-WebSocket-Protocol", upstream.subprotocol))
    return fields


def _key(headers: Mapping[str, str]) -> str | None:
    """The caller's Sec-WebSocket-Key if it is a base64-encoded 16-byte value (§4.1 step 7)."""
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(decoded) == 16 else None
