"""The outbound request handler: plain HTTP from the app, mTLS (and a token) out.

Per request: route by path and Host, drop hop-by-hop headers (RFC 9110
§7.6.1), lease the current connection pool, attach a bearer token where the
route has token settings, send, and stream the answer back unchanged.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import GatewayError, bad_gateway, gateway_timeout
from gateway.headers import downstream_response_headers, upstream_request_headers
from gateway.http1.writer import StreamCut
from gateway.outbound.client_tls import Trust
from gateway.outbound.pool import Lease, SessionPool
from gateway.outbound.routing import OutboundRoute, OutboundRouteTable, request_host
from gateway.outbound.tokens import TokenSource, TokenUnavailable
from gateway.paths import encode_path, normalise_path
from gateway.pipeline.messages import Request, Response

log = logging.getLogger("gateway.outbound")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
REPLAY_BUFFER_BYTES = 64 * 1024  # bodies up to this size are buffered so a retry can resend them
STREAM_CHUNK = 64 * 1024
_APP_AUTHORIZATION = frozenset({"authorization"})
_INVALID_TOKEN = re.compile(r'(?:^|[\s,])error\s*=\s*"?invalid_token"?', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """What the forwarder needs for one route besides its config."""

    trust: Trust
    tokens: TokenSource | None


def token_unavailable(cause: str) -> GatewayError:
    return GatewayError(502, "token_unavailable", cause)


def invalid_token_challenge(headers: CIMultiDictProxy[str]) -> bool:
    """RFC 6750 §3.1: ``WWW-Authenticate: Bearer error="invalid_token"``."""
    return any(
        "bearer" in value.lower() and _INVALID_TOKEN.search(value)
        for value in headers.getall("WWW-Authenticate", ())
    )


def _authority(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


class Forwarder:
    def __init__(
        self,
        *,
        table: OutboundRouteTable[RouteTarget],
        pool: SessionPool,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self._table = table
        self._pool = pool
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=timeout
        )

    async def handle(self, request: Request) -> Response:
        """The outbound pipeline's forward stage; GatewayError is rendered by the pipeline."""
        if "upgrade" in request.headers.get("Connection", "").lower():
            raise GatewayError(
                501, "not_implemented", "outbound listeners do not relay protocol upgrades"
            )
        path = normalise_path(request.path)
        route = self._table.find(path, request_host(request.headers.get("Host")))
        if route is None:
            raise GatewayError(404, "not_found", "no outbound route for this path and host")
        url = route.config.destination + encode_path(route.destination_path(path))
        if request.query_string:
            url += "?" + request.query_string
        tokens = route.target.tokens
        headers = upstream_request_headers(
            request.headers,
            managed=_APP_AUTHORIZATION if tokens is not None else frozenset(),
            injected=(),
            host=_authority(route.config.destination),
        )
        replayable = request.method in IDEMPOTENT_METHODS and (
            not request.body_exists
            or (
                request.content_length is not None and request.content_length <= REPLAY_BUFFER_BYTES
            )
        )
        body: bytes | None = None
        if replayable and request.body_exists:
            try:
                async with asyncio.timeout(self._timeout):
                    body = await request.read()
            except TimeoutError:
                raise GatewayError(
                    408, "request_timeout", "the request body stopped arriving"
                ) from None

        for attempt in (1, 2):
            async with self._pool.lease() as lease:
                token = await self._token(tokens, lease)
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                upstream = await self._send(request, route, url, headers, body, lease)
                if token is None or upstream.status != 401:
                    return await self._relay(request, upstream)
                if not invalid_token_challenge(upstream.headers):
                    return await self._relay(request, upstream)
                assert tokens is not None
                tokens.forget(token)
                if attempt == 2 or not replayable:
                    return await self._relay(request, upstream)
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
                upstream.release()
        raise AssertionError("unreachable: the second attempt always answers")

    @staticmethod
    async def _token(tokens: TokenSource | None, lease: Lease) -> str | None:
        if tokens is None:
            return None
        try:
            return await tokens.get(lease.material)
        except TokenUnavailable as exc:
            raise token_unavailable(str(exc)) from None

    async def _send(
        self,
        request: Request,
        route: OutboundRoute[RouteTarget],
        url: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        lease: Lease,
    ) -> aiohttp.ClientResponse:
        try:
            # The timeout bounds the wait for the response head (504); while
            # a streamed body moves, every chunk re-arms it, so a large upload
            # over a slow link is not cut at `timeout` in total.
            async with asyncio.timeout(self._timeout) as deadline:
                data: bytes | AsyncIterator[bytes] | None = body
                if body is None and request.body_exists:
                    data = self._stream(request, deadline)
                return await lease.session.request(
                    request.method,
                    yarl.URL(url, encoded=True),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    ssl=lease.material.context(route.target.trust),
                    timeout=self._client_timeout,
                    skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                )
        except TimeoutError:
            request.facts.upstream_error = "response timeout"
            raise gateway_timeout("the destination did not answer in time") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            request.facts.upstream_error = f"certificate refused: {exc.certificate_error}"
            raise bad_gateway(
                f"the destination's certificate was refused: {exc.certificate_error}"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            request.facts.upstream_error = f"unreachable: {exc.os_error}"
            raise bad_gateway("the destination is unreachable") from None
        except (aiohttp.ClientError, OSError) as exc:
            request.facts.upstream_error = type(exc).__name__
            raise bad_gateway(f"the destination failed: {type(exc).__name__}") from None

    def _stream(self, request: Request, deadline: asyncio.Timeout) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await request.content.read(STREAM_CHUNK):
                yield chunk
                deadline.reschedule(loop.time() + self._timeout)

        return chunks()

    @staticmethod
    async def _relay(request: Request, upstream: aiohttp.ClientResponse) -> Response:
        info = request.facts
        info.upstream_status = upstream.status
        length = upstream.headers.get("Content-Length")
        announced = (
            int(length)
            if length is not None
            and length.isdigit()
            and "Transfer-Encoding" not in upstream.headers
            else None
        )

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b""  # the head goes out at once: a slow stream must see it
                async for chunk in upstream.content.iter_any():
                    yield chunk
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # The head is gone already: cutting the connection is the only
                # way left to tell the app the body is incomplete.
                log.warning("destination failed mid-response: %s", type(exc).__name__)
                info.upstream_error = f"mid-response: {type(exc).__name__}"
                raise StreamCut(type(exc).__name__) from None
            finally:
                upstream.release()

        return Response(
            upstream.status,
            list(downstream_response_headers(upstream.headers).items()),
            stream=body(),
            length=announced,
            reason=upstream.reason or "",
        )
