"""Forwarding: route by longest prefix, enforce the route's policy, stream both ways.

WebSocket upgrades are admitted here and relayed by gateway/websocket/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Histogram

from gateway.auth import Authenticator, ConnectionAuth
from gateway.config import RouteConfig
from gateway.errors import GatewayError, access_denied, bad_gateway, gateway_timeout
from gateway.headers import (
    OVERRIDE_HEADERS,
    downstream_response_fields,
    upstream_request_headers,
)
from gateway.metrics import Metrics
from gateway.observability import RequestFacts, facts
from gateway.paths import (
    ambiguous_dot_segment,
    encode_path,
    normalise_path,
    readings_disagree,
    refused_character,
)
from gateway.request_body import body_too_slow, continue_if_expected, send_body
from gateway.upstream import (
    Origin,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
    parse_origin,
)
from gateway.websocket import (
    Closing,
    OpenSockets,
    WebSocketLimits,
    accept_caller,
    connect_upstream,
    is_upgrade,
    offered_protocols,
    refusal,
    relay,
)

log = logging.getLogger("gateway.proxy")

# Routing results kept per decoded path (Proxy._handle): bounded in count and
# in key length, so at most ~1 MiB of keys.
_CACHED_PATHS = 4096
_CACHED_PATH_LENGTH = 256


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
        upstreams: UpstreamPool,
        managed_headers: frozenset[str],
        token_checker: TokenChecker | None = None,
        metrics: Metrics | None = None,
        websocket_limits: WebSocketLimits | None = None,
    ) -> None:
        self._metrics = metrics
        self._table = RouteTable(routes)
        self._auth = authenticator
        self._session = session  # WebSocket upgrades only
        self._upstreams = upstreams  # every other request (gateway/upstream.py)
        self._loop = upstreams.loop
        # Parsed once per route, not per request.
        self._origins: dict[str, Origin] = {r.upstream: parse_origin(r.upstream) for r in routes}
        self._paths: dict[str, tuple[Route, str]] = {}
        self._latency: dict[str, Histogram] = {}
        self._managed = managed_headers
        self._stripped = _stripped_per_route(routes, managed_headers)
        self._tokens = token_checker or TokenChecker()
        self._ws_limits = websocket_limits or WebSocketLimits()
        # Open WebSockets, re-admitted when the registry or trust generation moves.
        self._sockets = OpenSockets(authenticator.generation)

    def reconfigure(self, routes: Sequence[RouteConfig]) -> None:
        """Swap the route table (config reload); no await, so no request sees half of it."""
        self._table = RouteTable(routes)
        self._origins = {r.upstream: parse_origin(r.upstream) for r in routes}
        self._stripped = _stripped_per_route(routes, self._managed)
        self._paths = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except GatewayError as exc:
            return exc.response()

    def _route(self, raw: str) -> tuple[Route, str]:
        """The route for a decoded request path, and the encoded upstream path."""
        # The rules and why: gateway/paths.py.
        if refused_character(raw):
            raise GatewayError(400, "invalid_request", "backslash or control character in path")
        if ambiguous_dot_segment(raw):
            raise GatewayError(400, "invalid_request", "ambiguous dot segment in path")
        if readings_disagree(raw, self._table.find):
            raise GatewayError(
                400,
                "invalid_request",
                "ambiguous path: with ';' parameters, trailing dots or spaces, or Unicode "
                "compatibility forms removed it is on another route",
            )
        path = normalise_path(raw)
        route = self._table.find(path)
        if route is None:
            raise GatewayError(404, "not_found", "no route for this path")
        # Forward the path that was routed on, encoded once, not the caller's bytes.
        return route, encode_path(route.upstream_path(path))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.path
        found = self._paths.get(raw)
        if found is None:
            # The checks, normpath, the route search and quote() cost ~6 µs;
            # they depend on the path alone and the route table never changes,
            # so results are kept for short paths (refusals are not cached).
            found = self._route(raw)
            if len(raw) <= _CACHED_PATH_LENGTH:
                if len(self._paths) >= _CACHED_PATHS:
                    self._paths.clear()
                self._paths[raw] = found
        route, target = found
        policy = route.config
        info = facts(request)
        info.route = route.prefix
        injected: tuple[tuple[str, str], ...] = ()
        auth: ConnectionAuth | None = None
        if policy.auth != "none":
            auth, injected = await self._admit(request, policy, info)
        if "Expect" in request.headers:
            await continue_if_expected(request)
        if request.query_string:
            target += "?" + request.raw_path.partition("?")[2]
        host = _caller_authority(request) if policy.preserve_host else _authority(policy.upstream)
        headers = upstream_request_headers(
            request.headers,
            # A reload between routing and here may have dropped the prefix.
            managed=self._stripped.get(policy.prefix) or _stripped_on(policy, self._managed),
            injected=injected,
            host=host,
            keep=_forwarded(request, via_proxy=self._auth.from_trusted_proxy(request)),
        )
        if is_upgrade(request.headers):
            return await self._websocket(request, policy.upstream + target, headers, policy, auth)
        return await self._forward(request, target, headers, policy, info)

    async def _admit(
        self, request: web.Request, policy: RouteConfig, info: RequestFacts | None
    ) -> tuple[ConnectionAuth, tuple[tuple[str, str], ...]]:
        """The caller's identity and the headers it gets on this route, or GatewayError."""
        auth = await self._auth.authenticate(request)
        if info is not None and auth.identity is not None:
            info.thumbprint = auth.identity.thumbprint
            info.client_id = auth.result.client.client_id if auth.result.client else None
        if policy.auth == "token":
            # The token names the client (a certificate may authenticate
            # several), so the checker applies the client checks to it.
            return auth, await self._tokens.check(request, policy, auth)
        client = auth.require_client()
        if policy.clients and client.client_id not in policy.clients:
            raise access_denied("this client is not allowed on this route")
        return auth, auth.headers

    async def _forward(
        self,
        request: web.Request,
        target: str,
        headers: CIMultiDict[str],
        policy: RouteConfig,
        info: RequestFacts,
    ) -> web.StreamResponse:
        origin = self._origins[policy.upstream]
        if origin.authorization is not None:
            headers["Authorization"] = origin.authorization
        method = request.method
        has_body = request.body_exists
        head = _request_head(method, origin.base_path + target, headers, has_body)
        # The route timeout bounds the wait for the response head (504), as the
        # asyncio.timeout around aiohttp's request did, connecting included;
        # while the request body streams, every chunk restarts it (_send_body).
        # One TimerHandle on the connection does it: asyncio.timeout() per
        # request cost a Timeout object, a handle and get_running_loop()
        # (a getpid() call in 3.11) each time.
        deadline = self._loop.time() + policy.timeout
        sent = time.perf_counter()
        try:
            conn = await self._upstreams.acquire(
                origin, min(policy.connect_timeout, policy.timeout)
            )
        except UpstreamTimeout:
            info.upstream_error = "connect timeout"
            raise gateway_timeout("the upstream did not answer in time") from None
        except UpstreamUnreachable as exc:
            info.upstream_error = f"unreachable: {exc}" if str(exc) else "unreachable"
            raise bad_gateway("the upstream is unreachable") from None
        conn.start(head, head_only=method == "HEAD", timeout=policy.timeout, deadline=deadline)
        sender: asyncio.Task[bool] | None = None
        if has_body:
            conn.body_sent = False
            sender = self._loop.create_task(send_body(request, conn, "Content-Length" in headers))
        try:
            await conn.response_head()
        except UpstreamTimeout as exc:
            _abandon(conn, sender)
            if exc.waiting_on_caller:
                info.upstream_error = "request body stalled"
                raise GatewayError(
                    408, "request_timeout", "the request body stopped arriving"
                ) from None
            info.upstream_error = "response timeout"
            raise gateway_timeout("the upstream did not answer in time") from None
        except UpstreamError as exc:
            _abandon(conn, sender)
            if body_too_slow(sender):
                info.upstream_error = "request body too slow"
                raise GatewayError(
                    408, "request_timeout", "the request body arrived too slowly"
                ) from None
            info.upstream_error = exc.label
            raise bad_gateway(f"the upstream failed: {exc.label}") from None
        except BaseException:
            _abandon(conn, sender)
            raise
        if self._metrics is not None:
            latency = self._latency.get(policy.prefix)
            if latency is None:
                # labels() takes a lock and builds a key per call: keep the children.
                latency = self._metrics.upstream_latency.labels(policy.prefix)
                self._latency[policy.prefix] = latency
            latency.observe(time.perf_counter() - sent)
        info.upstream_status = conn.status
        fields, length, transfer_encoding = downstream_response_fields(conn.headers())
        response = _RelayResponse(status=conn.status, reason=conn.reason, headers=fields)
        if length is not None and length.isdigit() and not transfer_encoding:
            response.content_length = int(length)
        if conn.complete and sender is None:
            # The whole answer is in (the common small response): hand the
            # connection back first, then send head and body in one write.
            body = conn.take_body()
            conn.finish()
            # Counted here, not in a write() override: that cost a coroutine
            # frame per write on the hot path.
            info.body_bytes = 0 if method == "HEAD" else len(body)
            await response.prepare(request)
            await response.write_eof(body)
            return response
        sent = 0
        try:
            await response.prepare(request)
            # The head goes out with the first body chunk, or alone at once
            # when none is buffered yet (a slow stream must see its head).
            chunk = conn.take_body()
            while True:
                sent += len(chunk)
                await response.write(chunk)
                chunk = await conn.read()
                if not chunk:
                    break
        except (UpstreamError, aiohttp.ClientError, OSError) as exc:
            # Headers are gone already: the only honest signal left is to
            # cut the connection, so the client sees a truncated response.
            name = exc.label if isinstance(exc, UpstreamError) else type(exc).__name__
            log.warning("upstream failed mid-response: %s", name)
            info.upstream_error = f"mid-response: {name}"
            info.body_bytes = sent
            _abandon(conn, sender)
            if request.transport is not None:
                request.transport.abort()
            return response
        except BaseException:
            _abandon(conn, sender)
            raise
        if sender is not None and not sender.done():
            # An early answer while the body still streams: the connection
            # cannot be reused, and the rest of the body is not needed.
            _abandon(conn, sender)
        else:
            conn.finish()
        info.body_bytes = sent
        await response.write_eof()
        return response

    async def _websocket(
        self,
        request: web.Request,
        target: str,
        headers: CIMultiDict[str],
        policy: RouteConfig,
        auth: ConnectionAuth | None,
    ) -> web.StreamResponse:
        """Upgrade, then relay (gateway/websocket/) while the caller stays admitted."""
        upstream = await connect_upstream(
            self._session,
            target,
            headers,
            protocols=offered_protocols(request.headers),
            within=policy.timeout,
            limits=self._ws_limits,
            info=facts(request),
        )
        try:
            caller = await accept_caller(request, upstream.protocol, self._ws_limits)
        except BaseException:
            await upstream.close()
            raise
        recheck = None
        if auth is not None:

            async def recheck() -> Closing | None:
                # The same decision as for the upgrade, at the registry and
                # trust state of now (on token routes the token is verified again).
                try:
                    await self._admit(request, policy, None)
                except GatewayError as exc:
                    return refusal(exc)
                return None

        await relay(
            caller,
            upstream,
            self._ws_limits,
            self._sockets,
            recheck,
            admitted_at=(auth.registry_generation, auth.trust_generation) if auth else None,
            expires_at=auth.valid_until if auth else float("inf"),
        )
        return caller


class _RelayResponse(web.StreamResponse):
    """A StreamResponse whose head waits for the first body bytes.

    aiohttp's StreamResponse writes its head at once, so every relayed
    response cost two writes (two TLS records, two syscalls); web.Response
    buffers its head the same way, and so does this.
    """

    _send_headers_immediately = False


_NO_DEFAULT_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


def _request_head(method: str, target: str, headers: CIMultiDict[str], has_body: bool) -> bytes:
    """The request line and header block, as aiohttp's client sent them.

    aiohttp added ``Accept: */*`` when the caller sent none, ``Content-Length:
    0`` for a body-less request whose method implies a body, and
    ``Transfer-Encoding: chunked`` for a body of unknown length.
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if "Accept" not in headers:
        lines.append("Accept: */*")
    if has_body:
        if "Content-Length" not in headers:
            lines.append("Transfer-Encoding: chunked")
    elif method not in _NO_DEFAULT_LENGTH and "Content-Length" not in headers:
        lines.append("Content-Length: 0")
    lines.append("\r\n")
    head = "\r\n".join(lines)
    # Values come from llhttp (which refuses CR and LF in them) or from the
    # gateway's own escaped identity values; one count keeps that promise here.
    if head.count("\n") != len(lines) or head.count("\r") != len(lines):
        raise GatewayError(400, "invalid_request", "line break in a forwarded header")
    return head.encode("utf-8", "surrogateescape")


def _abandon(conn: UpstreamConnection, sender: asyncio.Task[bool] | None) -> None:
    conn.close()
    if sender is not None and not sender.done():
        sender.cancel()


def _stripped_on(route: RouteConfig, managed: frozenset[str]) -> frozenset[str]:
    """Header keys removed from requests on a route: the managed names, and the
    override headers (headers.OVERRIDE_HEADERS) the route does not allow."""
    return managed | (OVERRIDE_HEADERS - route.allow_override_headers)


def _stripped_per_route(
    routes: Sequence[RouteConfig], managed: frozenset[str]
) -> dict[str, frozenset[str]]:
    return {r.prefix: _stripped_on(r, managed) for r in routes}


def _authority(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _forwarded(request: web.Request, *, via_proxy: bool = False) -> tuple[tuple[str, str], ...]:
    # The caller's copies were stripped: these are the gateway's own observations.
    # (request.remote is the PROXY protocol's client address where one was sent.)
    remote = request.remote or ""
    if via_proxy and "X-Forwarded-For" in request.headers:
        # A trusted TLS-terminating proxy (forwarded_client_cert) names the
        # client it served: keep its list and append the proxy, as proxies do.
        remote = ", ".join([*request.headers.getall("X-Forwarded-For"), remote])
    return (
        ("X-Forwarded-For", remote),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", _caller_authority(request)),
    )


def _caller_authority(request: web.Request) -> str:
    # The Host field as sent (framing.py checked it, and that an absolute-form
    # target names the same authority); request.host would drop the port of
    # an absolute-form target.
    return request.headers.get("Host", request.host)
