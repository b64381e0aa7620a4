"""Forwarding: route by longest prefix, enforce the route's policy, stream both ways."""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import yarl
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from gateway.auth import Authenticator, ConnectionAuth
from gateway.config import RouteConfig
from gateway.errors import GatewayError, access_denied, bad_gateway, gateway_timeout
from gateway.headers import (
    downstream_response_headers,
    header_key,
    upstream_request_headers,
)
from gateway.metrics import Metrics
from gateway.observability import facts

log = logging.getLogger("gateway.proxy")

STREAM_CHUNK = 64 * 1024
_REFUSED_PATH_CHARACTERS = re.compile(r"[\\\x00-\x1f\x7f]")


def normalise_path(path: str) -> str:
    """The decoded path with dot segments removed (RFC 3986 §5.2.4).

    Routing and forwarding both use this one form, so the upstream sees exactly
    the path whose policy was checked: ``/public/..%2Fadmin`` is ``/admin`` to
    both.  Repeated slashes collapse for the same reason.
    """
    normalised = posixpath.normpath(path) if path else "/"
    if normalised.startswith("//"):  # normpath keeps a leading "//" (POSIX)
        normalised = "/" + normalised.lstrip("/")
    if path.endswith("/") and normalised != "/":
        normalised += "/"
    return normalised


def encode_path(path: str) -> str:
    return quote(path, safe="/:@!$&'()*+,;=-._~")


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    prefix: str  # without trailing slash, except "/"

    def matches(self, path: str) -> bool:
        # Segment boundary: "/api" serves "/api" and "/api/x", never "/apiary".
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")

    def upstream_path(self, path: str) -> str:
        if self.config.strip_prefix and self.prefix != "/":
            return path[len(self.prefix) :] or "/"
        return path


class RouteTable:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        ordered = sorted(routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True)
        self._routes = tuple(Route(r, r.prefix.rstrip("/") or "/") for r in ordered)

    def find(self, path: str) -> Route | None:
        for route in self._routes:
            if route.matches(path):
                return route
        return None


class TokenChecker:
    """What ``auth: token`` routes need from the token service (wired by the app)."""

    async def check(
        self, request: web.Request, route: RouteConfig, auth: ConnectionAuth
    ) -> tuple[tuple[str, str], ...]:
        """Validate the bearer token; return identity headers, or raise GatewayError.

        Owns every client check on the route: the certificate must authenticate
        the token's client, which must pass ``route.clients``.
        """
        raise GatewayError(
            401,
            "invalid_token",
            "token-protected routes need the token service",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


class Proxy:
    def __init__(
        self,
        *,
        routes: Sequence[RouteConfig],
        authenticator: Authenticator,
        session: aiohttp.ClientSession,
        managed_headers: frozenset[str],
        token_checker: TokenChecker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._table = RouteTable(routes)
        self._auth = authenticator
        self._session = session
        self._managed = managed_headers
        self._tokens = token_checker or TokenChecker()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except GatewayError as exc:
            return exc.response()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if _REFUSED_PATH_CHARACTERS.search(request.path):
            # Windows/IIS-style upstreams read "\\" as "/", so "/public/..%5Cprivate"
            # would reach /private past the /public policy; control characters
            # have no business in a path either.  Refuse, as Envoy can.
            raise GatewayError(400, "invalid_request", "backslash or control character in path")
        path = normalise_path(request.path)
        route = self._table.find(path)
        if route is None:
            raise GatewayError(404, "not_found", "no route for this path")
        policy = route.config
        info = facts(request)
        info.route = route.prefix
        injected: tuple[tuple[str, str], ...] = ()
        if policy.auth != "none":
            auth = await self._auth.authenticate(request)
            if auth.identity is not None:
                info.thumbprint = auth.identity.thumbprint
                info.client_id = auth.result.client.client_id if auth.result.client else None
            if policy.auth == "token":
                # The token names the client (a certificate may authenticate
                # several), so the checker applies the client checks to it.
                injected = await self._tokens.check(request, policy, auth)
            else:
                client = auth.require_client()
                if policy.clients and client.client_id not in policy.clients:
                    raise access_denied("this client is not allowed on this route")
                injected = auth.headers
        # Forward the path that was routed on, encoded once, not the caller's bytes.
        target = policy.upstream + encode_path(route.upstream_path(path))
        if request.query_string:
            target += "?" + request.raw_path.partition("?")[2]
        headers = upstream_request_headers(
            request.headers,
            managed=self._managed,
            injected=injected,
            host=request.host if policy.preserve_host else _authority(policy.upstream),
            keep=_forwarded(request),
        )
        if _is_websocket(request):
            return await self._websocket(request, target, headers, policy)
        return await self._forward(request, target, headers, policy)

    async def _forward(
        self, request: web.Request, target: str, headers: CIMultiDict[str], policy: RouteConfig
    ) -> web.StreamResponse:
        wait = _IdleTimer(policy.timeout)
        body = _body(request, wait)
        try:
            # The route timeout bounds the wait for the response head (504);
            # afterwards sock_read bounds each idle gap while streaming.  While
            # the request body streams, it is re-armed by every chunk (_body).
            async with asyncio.timeout(policy.timeout) as scope:
                wait.scope = scope
                try:
                    sent = time.perf_counter()
                    upstream = await self._session.request(
                        request.method,
                        yarl.URL(target, encoded=True),
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(
                            total=None,
                            sock_connect=policy.connect_timeout,
                            sock_read=policy.timeout,
                        ),
                        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                    )
                finally:
                    # The head is in (or the request failed): a body still
                    # streaming after an early answer no longer moves the clock.
                    wait.scope = None
        except TimeoutError:
            if wait.waiting_on_caller:
                raise GatewayError(
                    408, "request_timeout", "the request body stopped arriving"
                ) from None
            raise gateway_timeout("the upstream did not answer in time") from None
        except aiohttp.ClientConnectorError:
            raise bad_gateway("the upstream is unreachable") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise bad_gateway(f"the upstream failed: {type(exc).__name__}") from None
        try:
            if self._metrics is not None:
                self._metrics.upstream_latency.labels(policy.prefix).observe(
                    time.perf_counter() - sent
                )
            facts(request).upstream_status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(downstream_response_headers(upstream.headers))
            length = upstream.headers.get("Content-Length")
            if (
                length is not None
                and length.isdigit()
                and "Transfer-Encoding" not in upstream.headers
            ):
                response.content_length = int(length)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # Headers are gone already: the only honest signal left is to
                # cut the connection, so the client sees a truncated response.
                log.warning("upstream failed mid-response: %s", type(exc).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            return response
        finally:
            upstream.release()

    async def _websocket(
        self, request: web.Request, target: str, headers: CIMultiDict[str], policy: RouteConfig
    ) -> web.StreamResponse:
        protocols = [
            p.strip()
            for v in request.headers.getall("Sec-WebSocket-Protocol", ())
            for p in v.split(",")
            if p.strip()
        ]
        for name in list(headers):
            if header_key(name).startswith("sec-websocket-"):
                del headers[name]
        ws_target = "ws" + target[4:] if target.startswith("http") else target
        try:
            async with asyncio.timeout(policy.timeout):
                upstream_ws = await self._session.ws_connect(
                    yarl.URL(ws_target, encoded=True),
                    headers=headers,
                    protocols=protocols,
                    autoping=False,
                )
        except TimeoutError:
            raise gateway_timeout("the upstream did not answer in time") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise bad_gateway(
                f"the upstream refused the WebSocket upgrade ({exc.status})"
            ) from None
        except (aiohttp.ClientError, OSError):
            raise bad_gateway("the upstream is unreachable") from None
        downstream = web.WebSocketResponse(
            protocols=[upstream_ws.protocol] if upstream_ws.protocol else (), autoping=False
        )
        await downstream.prepare(request)
        try:
            await _relay_websocket(downstream, upstream_ws)
        finally:
            await upstream_ws.close()
            await downstream.close()
        return downstream


async def _relay_websocket(
    downstream: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    async def pump(
        source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> None:
        async for msg in source:
            if msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await sink.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await sink.pong(msg.data)
            else:
                break
        await sink.close()

    tasks = [
        asyncio.create_task(pump(downstream, upstream)),
        asyncio.create_task(pump(upstream, downstream)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _is_websocket(request: web.Request) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


@dataclass(slots=True)
class _IdleTimer:
    """The route timeout while a request body streams: an idle timer, not a total.

    Counting the whole upload against it turned every upload slower than the
    timeout into a 504 although the upstream kept up; pausing it while the
    caller is silent would let a stalled caller hold an upstream connection
    for ever.  So every chunk that moves re-arms it, and when it fires the
    side we were waiting on is the one blamed (408 caller, 504 upstream).
    """

    timeout: float
    scope: asyncio.Timeout | None = None
    waiting_on_caller: bool = False

    def progress(self, *, waiting_on_caller: bool) -> None:
        self.waiting_on_caller = waiting_on_caller
        if self.scope is not None:
            self.scope.reschedule(asyncio.get_running_loop().time() + self.timeout)


def _body(request: web.Request, wait: _IdleTimer) -> AsyncIterator[bytes] | None:
    if not request.body_exists:
        return None

    async def chunks() -> AsyncIterator[bytes]:
        wait.progress(waiting_on_caller=True)
        async for chunk in request.content.iter_chunked(STREAM_CHUNK):
            wait.progress(waiting_on_caller=False)
            yield chunk  # returns once the upstream connection took the chunk
            wait.progress(waiting_on_caller=True)
        # All sent: from now on only the upstream's answer is awaited.
        wait.progress(waiting_on_caller=False)

    return chunks()


def _authority(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _forwarded(request: web.Request) -> tuple[tuple[str, str], ...]:
    # The caller's copies were stripped: these are the gateway's own observations.
    return (
        ("X-Forwarded-For", request.remote or ""),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", request.host),
    )
