"""JSON error answers, rendered in one place.

OAuth endpoints answer RFC 6749 §5.2 bodies (``error``, ``error_description``);
the proxy uses the same shape so that a caller sees one format everywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from gateway.pipeline.facts import RequestFacts
from gateway.pipeline.messages import Response
from gateway.upstream import (
    MALFORMED,
    TOO_SLOW,
    UpstreamConnection,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    abandon,
    body_cut,
)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class GatewayError(Exception):
    """An error with its HTTP rendering; raise it anywhere under a handler."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})
        # Extra members of the JSON body (RFC 6749 §5.2 allows them), e.g. the
        # thumbprint of a refused certificate.
        self.details = dict(details or {})

    def response(self) -> Response:
        return json_error(self.status, self.error, self.description, self.headers, self.details)


def _rendered(
    error: str,
    description: str,
    headers: Mapping[str, str] | None,
    details: Mapping[str, str] | None,
) -> tuple[str, dict[str, str]]:
    body = json.dumps({"error": error, "error_description": description, **(details or {})})
    return body, {**NO_STORE, **(headers or {})}


def json_error(
    status: int,
    error: str,
    description: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, str] | None = None,
) -> Response:
    body, merged = _rendered(error, description, headers, details)
    return Response(status, [("Content-Type", "application/json"), *merged.items()], body.encode())


def closing_json_error(status: int, error: str, description: str) -> Response:
    """``json_error`` on a connection that closes after it (framing and parser refusals)."""
    response = json_error(status, error, description)
    response.force_close()
    return response


# The proxy's fixed answers.
def client_certificate_required() -> GatewayError:
    return GatewayError(
        401, "client_certificate_required", "a registered client certificate is required"
    )


def access_denied(
    description: str = "the client certificate is not registered or not enabled",
    thumbprint: str | None = None,
) -> GatewayError:
    details = {"thumbprint": thumbprint} if thumbprint else None
    return GatewayError(403, "access_denied", description, details=details)


def registry_unavailable() -> GatewayError:
    return GatewayError(
        503, "temporarily_unavailable", "the client registry is unreachable", {"Retry-After": "5"}
    )


def bad_gateway(description: str) -> GatewayError:
    return GatewayError(502, "bad_gateway", description)


def gateway_timeout(description: str) -> GatewayError:
    return GatewayError(504, "gateway_timeout", description)


def head_failure(
    exc: UpstreamError,
    conn: UpstreamConnection,
    sender: asyncio.Task[str | None] | None,
    info: RequestFacts,
    peer: str,
) -> GatewayError:
    """The refusal for an HTTP/1.1 exchange whose response head did not come (proxy and outbound).

    The exchange is dropped (the connection closes, a body still being sent
    stops) and the reason goes to ``info``.  A plain function the caller
    raises from its own ``except``: a coroutine around ``response_head()``
    would be one more frame per request.
    """
    abandon(conn, sender)
    refusal, info.upstream_error = upstream_failure(exc, peer, body_cut=body_cut(sender))
    return refusal


def upstream_failure(
    exc: UpstreamError, peer: str, *, connecting: bool = False, body_cut: str | None = None
) -> tuple[GatewayError, str]:
    """The answer for an exchange that failed before the upstream's head, and the log's reason.

    One mapping for every path that calls an upstream (``peer`` names it:
    "upstream", "destination"): a deadline is 504, unless the caller's body
    was what stalled (408); anything else is 502.  The reason goes to the
    access log's ``upstream_error``.
    """
    if isinstance(exc, UpstreamTimeout):
        if exc.waiting_on_caller:
            stalled = GatewayError(408, "request_timeout", "the request body stopped arriving")
            return stalled, "request body stalled"
        reason = "connect timeout" if connecting else "response timeout"
        return gateway_timeout(f"the {peer} did not answer in time"), reason
    if isinstance(exc, UpstreamUnreachable):
        return bad_gateway(f"the {peer} is unreachable"), f"unreachable: {exc}"
    if body_cut == TOO_SLOW:
        slow = GatewayError(408, "request_timeout", "the request body arrived too slowly")
        return slow, TOO_SLOW
    if body_cut == MALFORMED:
        # A malformed chunk in the caller's body: its fault, not the upstream's.
        return GatewayError(400, "invalid_request", "malformed request body"), MALFORMED
    return bad_gateway(f"the {peer} failed: {exc.label}"), exc.label
