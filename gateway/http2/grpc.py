"""gRPC answers for the gateway's own refusals (gRPC over HTTP/2, PROTOCOL-HTTP2.md).

A gRPC client reads the outcome of a call from ``grpc-status`` and
``grpc-message``, not from the HTTP status: a refusal is a "Trailers-Only"
answer, one HEADERS frame with END_STREAM carrying ``:status 200``,
``content-type: application/grpc`` and the two status fields.

The HTTP → gRPC table is gRPC's own "HTTP to gRPC Status Code Mapping"
(doc/http-grpc-status-mapping.md, what a client applies to an answer without
``grpc-status``: 400 → INTERNAL, 401 → UNAUTHENTICATED, 403 →
PERMISSION_DENIED, 404 → UNIMPLEMENTED, 429/502/503 → UNAVAILABLE, others
UNKNOWN), with what the gateway knows better than a client could: its 504 is
a deadline that passed (DEADLINE_EXCEEDED, as issue 17 asks, where the table
says UNAVAILABLE), a slow request body (408) likewise, and its 501 refuses a
method it does not implement (UNIMPLEMENTED).
"""

from __future__ import annotations

from enum import IntEnum
from urllib.parse import quote

from multidict import CIMultiDict

from gateway.errors import GatewayError
from gateway.pipeline.messages import Response


class GrpcStatus(IntEnum):
    """grpc/include/grpc/impl/codegen/status.h (statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


_BY_HTTP_STATUS = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    408: GrpcStatus.DEADLINE_EXCEEDED,
    429: GrpcStatus.UNAVAILABLE,
    501: GrpcStatus.UNIMPLEMENTED,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.DEADLINE_EXCEEDED,
}

# PROTOCOL-HTTP2.md: grpc-message is Percent-Encoded, where the unencoded
# bytes are %x20-%x24 / %x26-%x7E (printable ASCII but "%") and everything
# else is the "%" HEXDIGIT HEXDIGIT form of its UTF-8 octets.
_UNENCODED = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def grpc_status_for(http_status: int) -> GrpcStatus:
    return _BY_HTTP_STATUS.get(http_status, GrpcStatus.UNKNOWN)


def encode_grpc_message(message: str) -> str:
    return quote(message, safe=_UNENCODED, encoding="utf-8", errors="replace")


def is_grpc(content_type: str | None) -> bool:
    """``application/grpc`` with or without a ``+proto``/``+json`` suffix or parameters."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/grpc" or media.startswith("application/grpc+")


def wants_grpc_answer(protocol: str, headers: CIMultiDict[str]) -> bool:
    """A refusal of this request is rendered as a gRPC status (gRPC needs HTTP/2)."""
    return protocol == "HTTP/2" and is_grpc(headers.get("Content-Type"))


def grpc_error_response(status: int, error: str, description: str) -> Response:
    """The Trailers-Only answer for one refusal; ``error`` (the JSON code) leads the message."""
    code = grpc_status_for(status)
    message = f"{error}: {description}" if description else error
    return Response(
        200,
        [
            ("content-type", "application/grpc"),
            ("grpc-status", str(int(code))),
            ("grpc-message", encode_grpc_message(message)),
        ],
    )


def render_grpc_error(exc: GatewayError) -> Response:
    """What the pipeline's error renderer answers a gRPC caller instead of the JSON body."""
    return grpc_error_response(exc.status, exc.error, exc.description)
