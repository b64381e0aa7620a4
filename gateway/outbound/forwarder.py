"""The outbound request handler: plain HTTP from the app, mTLS (and a token) out.

Per request: route by path and Host, drop hop-by-hop headers (RFC 9110
§7.6.1), take the current client material, attach a bearer token where the
route has token settings, send on a pooled connection that presents that
material's certificate (gateway/upstream/), and stream the answer back
unchanged.  It takes a ``gateway.pipeline.messages.Request`` and returns a
``Response``, as every stage of the pipeline does.

Authorization: on a route with token settings the gateway owns the
destination's authorization, so whatever ``Authorization`` the app sent is
replaced: the destination sees exactly one credential, bound to the
certificate it sees (RFC 8705 §3), never a mix of the app's and ours.  On a
route without token settings the app's header passes through untouched.

A 401 whose challenge says the token is no good (RFC 6750 §3.1
``error="invalid_token"``: revoked, or the destination's view of its
validity differs from ours) drops the cached token.  The request is sent
once more with a fresh token when that is safe: an idempotent method
(RFC 9110 §9.2.2) and a body that was empty or small enough to buffer.
Otherwise the 401 reaches the app and the next request gets a fresh token.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from gateway.errors import GatewayError, bad_gateway, head_failure, upstream_failure
from gateway.headers import downstream_response_fields, upstream_request_headers
from gateway.outbound.client_tls import ClientMaterial, Trust
from gateway.outbound.pool import OutboundPool
from gateway.outbound.routing import OutboundRoute, OutboundRouteTable, request_host
from gateway.outbound.tokens import TokenSource, TokenUnavailable
from gateway.paths import encode_path, normalise_path
from gateway.pipeline.chain import render_error
from gateway.pipeline.messages import Request, Response
from gateway.upstream import (
    CertificateRefused,
    Origin,
    ResponseStream,
    UnsafeHeader,
    UpstreamConnection,
    UpstreamError,
    abandon,
    parse_origin,
    request_head,
    send_body,
)

if TYPE_CHECKING:
    from gateway.outbound.forward_h2 import Http2Outbound

log = logging.getLogger("gateway.outbound")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
REPLAY_BUFFER_BYTES = 64 * 1024  # bodies up to this size are buffered so a retry can resend them
_APP_AUTHORIZATION = frozenset({"authorization"})
PEER = "destination"  # how answers name the other end
_INVALID_TOKEN = re.compile(rb'(?:^|[\s,])error\s*=\s*"?invalid_token"?', re.IGNORECASE)

Sent = tuple[UpstreamConnection, asyncio.Task[str | None] | None]


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """What the forwarder needs for one route besides its config."""

    trust: Trust
    tokens: TokenSource | None


def token_unavailable(cause: str) -> GatewayError:
    return GatewayError(502, "token_unavailable", cause)


def invalid_token_challenge(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """RFC 6750 §3.1: ``WWW-Authenticate: Bearer error="invalid_token"``."""
    return any(
        name.lower() == b"www-authenticate"
        and b"bearer" in value.lower()
        and _INVALID_TOKEN.search(value) is not None
        for name, value in fields
    )


class Forwarder:
    def __init__(
        self,
        *,
        table: OutboundRouteTable[RouteTarget],
        pool: OutboundPool,
        connect_timeout: float,
        timeout: float,
        http2: Http2Outbound | None = None,
    ) -> None:
        self._table = table
        self._pool = pool
        self._http2 = http2  # the app's h2c calls (gRPC), sent as h2
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        self._origins: dict[str, Origin] = {}

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except GatewayError as exc:
            return render_error(request, exc)  # a gRPC caller (h2c) gets its gRPC status

    async def _handle(self, request: Request) -> Response:
        if "upgrade" in request.headers.get("Connection", "").lower():
            raise GatewayError(
                501, "not_implemented", "outbound listeners do not relay protocol upgrades"
            )
        path = normalise_path(request.path)
        route = self._table.find(path, request_host(request.headers.get("Host")))
        if route is None:
            raise GatewayError(404, "not_found", "no outbound route for this path and host")
        request.facts.route = route.prefix
        origin = self._origin(route.config.destination)
        target = origin.base_path + encode_path(route.destination_path(path))
        if request.query_string:
            target += "?" + request.query_string
        tokens = route.target.tokens
        headers = upstream_request_headers(
            request.headers,
            managed=_APP_AUTHORIZATION if tokens is not None else frozenset(),
            injected=(),
            host=origin.authority,
        )
        if request.protocol == "HTTP/2" and self._http2 is not None:
            target = encode_path(route.destination_path(path))
            if request.query_string:
                target += "?" + request.query_string
            return await self._http2.forward(request, route, target, headers)
        length = request.content_length
        replayable = request.method in IDEMPOTENT_METHODS and (
            not request.body_exists or (length is not None and length <= REPLAY_BUFFER_BYTES)
        )
        body: bytes | None = None
        if replayable and request.body_exists:
            try:
                async with asyncio.timeout(self._timeout):
                    body = await request.content.read_all(REPLAY_BUFFER_BYTES)
            except TimeoutError:
                raise GatewayError(
                    408, "request_timeout", "the request body stopped arriving"
                ) from None

        for attempt in (1, 2):
            material = self._pool.material()
            token = await self._token(tokens, material)
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            conn, sender = await self._send(request, route, origin, target, headers, body, material)
            if token is None or conn.status != 401 or not invalid_token_challenge(conn.headers()):
                return self._answer(request, conn, sender)
            assert tokens is not None
            tokens.forget(token)
            if attempt == 2 or not replayable:
                return self._answer(request, conn, sender)
            log.info(
                "%s refused the access token for %s; retrying once with a new one",
                route.config.destination,
                tokens.label,
                extra={
                    "event": "outbound_token_refused",
                    "destination": route.config.destination,
                    "client_id": tokens.config.client_id,
                },
            )
            if conn.complete and sender is None:
                conn.take_body()  # the refusal's body is not needed; the connection is
                conn.finish()
            else:
                abandon(conn, sender)
        raise AssertionError("unreachable: the second attempt always answers")

    def _origin(self, destination: str) -> Origin:
        origin = self._origins.get(destination)
        if origin is None:
            origin = self._origins[destination] = parse_origin(destination)
        return origin

    @staticmethod
    async def _token(tokens: TokenSource | None, material: ClientMaterial) -> str | None:
        if tokens is None:
            return None
        try:
            return await tokens.get(material)
        except TokenUnavailable as exc:
            raise token_unavailable(str(exc)) from None

    async def _send(
        self,
        request: Request,
        route: OutboundRoute[RouteTarget],
        origin: Origin,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        material: ClientMaterial,
    ) -> Sent:
        """The request sent and the answer's head in: the connection, and a body still sending."""
        info = request.facts
        try:
            head = request_head(request.method, target, headers, request.body_exists)
        except UnsafeHeader as exc:
            raise GatewayError(400, "invalid_request", str(exc)) from None
        loop = asyncio.get_running_loop()
        # The timeout bounds the wait for the response head (504), connecting
        # included; while a streamed body moves, every chunk re-arms it
        # (gateway/upstream/body.py), so a large upload over a slow link is
        # not cut at `timeout` in total.
        deadline = loop.time() + self._timeout
        try:
            conn = await self._pool.acquire(
                origin, material, route.target.trust, self._connect_timeout
            )
        except CertificateRefused as exc:
            # The app is local, and its operator needs the reason to act.
            info.upstream_error = f"certificate refused: {exc}"
            raise bad_gateway(f"the destination's certificate was refused: {exc}") from None
        except UpstreamError as exc:
            refusal, info.upstream_error = upstream_failure(exc, PEER, connecting=True)
            raise refusal from None
        head_only = request.method == "HEAD"
        conn.start(
            head + (body or b""), head_only=head_only, timeout=self._timeout, deadline=deadline
        )
        sender: asyncio.Task[str | None] | None = None
        if body is None and request.body_exists:
            conn.body_sent = False
            chunked = "Content-Length" not in headers
            sender = loop.create_task(send_body(conn, request.content, chunked=chunked))
        try:
            await conn.response_head()
        except UpstreamError as exc:
            raise head_failure(exc, conn, sender, info, PEER) from None
        except BaseException:
            abandon(conn, sender)
            raise
        info.upstream_status = conn.status
        return conn, sender

    @staticmethod
    def _answer(
        request: Request, conn: UpstreamConnection, sender: asyncio.Task[str | None] | None
    ) -> Response:
        fields, length, transfer_encoding = downstream_response_fields(conn.headers())
        announced = (
            int(length)
            if length is not None and length.isdigit() and not transfer_encoding
            else None
        )
        status, reason = conn.status, conn.reason
        if conn.complete and sender is None:
            # The whole answer is in (the common small one): the connection
            # goes back first, then the answer is written in one go.
            body = conn.take_body()
            conn.finish()
            head_only = request.method == "HEAD"
            return Response(
                status, fields, body, length=announced if head_only else None, reason=reason
            )

        def cut(exc: UpstreamError) -> None:
            log.warning("destination failed mid-response: %s", exc.label)
            request.facts.upstream_error = f"mid-response: {exc.label}"

        stream = ResponseStream(conn, sender=sender, on_cut=cut)
        return Response(status, fields, stream=stream, length=announced, reason=reason)
