"""The proxy's stages of the pipeline: route, authenticate, authorize, continue, identity headers, forward.

Every stage takes the ``Request`` and either lets it go on (None) or raises
``GatewayError``; ``forward`` answers.  The per-request working state is a
``ProxyExchange`` on the request.  WebSocket upgrades are admitted by the same
stages and relayed by gateway/websocket/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from multidict import CIMultiDict

from gateway.auth import Authenticator, ConnectionAuth
from gateway.errors import access_denied
from gateway.headers import OVERRIDE_HEADERS, connection_tokens, upstream_request_fields
from gateway.http2.client import Http2Client
from gateway.listener.config import LimitsConfig
from gateway.ops.metrics import Metrics
from gateway.pipeline.chain import Stage
from gateway.pipeline.messages import Request, Response
from gateway.proxy.config import RouteConfig
from gateway.proxy.exchange import ProxyExchange
from gateway.proxy.forward import Forwarder
from gateway.proxy.forward_h2 import Http2Forwarder
from gateway.proxy.routes import RouteTable
from gateway.proxy.tokens import TokenChecker
from gateway.proxy.websockets import WebSocketStage
from gateway.request_body import continue_if_expected
from gateway.upstream import Origin, UpstreamPool, parse_origin
from gateway.websocket import OpenSockets, WebSocketLimits, is_upgrade


class Proxy:
    def __init__(
        self,
        *,
        routes: Sequence[RouteConfig],
        authenticator: Authenticator,
        upstreams: UpstreamPool,
        managed_headers: frozenset[str],
        limits: LimitsConfig,
        token_checker: TokenChecker | None = None,
        metrics: Metrics | None = None,
        http2_upstreams: Http2Client | None = None,
    ) -> None:
        self._auth = authenticator
        self._managed = managed_headers
        self._tokens = token_checker or TokenChecker()
        self._forwarder = Forwarder(upstreams, limits, metrics)
        # Routes with upstream_protocol h2c | h2 (gateway/http2/client.py).
        self._http2 = Http2Forwarder(http2_upstreams or Http2Client())
        # Open WebSockets, re-admitted when the registry or trust generation moves.
        self.sockets = OpenSockets(authenticator.generation)
        self._websockets = WebSocketStage(
            WebSocketLimits.from_config(limits), self.sockets, self.readmit
        )
        self.reconfigure(routes)

    def reconfigure(self, routes: Sequence[RouteConfig]) -> None:
        """Swap the route table (config reload); no await, so no request sees half of it."""
        self._table = RouteTable(routes)
        self._origins: dict[str, Origin] = {r.upstream: parse_origin(r.upstream) for r in routes}
        self._stripped = {r.prefix: _stripped_on(r, self._managed) for r in routes}

    def stages(self) -> list[Stage]:
        return [
            Stage.of("route", self.route),
            Stage.of("authenticate", self.authenticate),
            Stage.of("authorize", self.authorize),
            Stage.of("continue", self.send_continue),
            Stage.of("identity headers", self.identity_headers),
            Stage.of("forward", self.forward),
        ]

    # -- the stages --------------------------------------------------------------

    def route(self, request: Request) -> None:
        route, target = self._table.resolve(request.path)
        request.facts.route = route.prefix
        upstream = route.config.upstream
        origin = self._origins.get(upstream) or parse_origin(upstream)
        request.exchange = ProxyExchange(route.config, route.prefix, target, origin)

    def authenticate(self, request: Request) -> Awaitable[None] | None:
        exchange = request.exchange
        assert isinstance(exchange, ProxyExchange), "the route stage runs first"
        if exchange.policy.auth == "none":
            return None
        # The connection's cached identity answers without a coroutine; only
        # a first request (or one after a reload) waits for the lookup.
        auth = self._auth.cached(request)
        if auth is None:
            return self._authenticate(request, exchange)
        _note_identity(request, exchange, auth)
        return None

    async def _authenticate(self, request: Request, exchange: ProxyExchange) -> None:
        _note_identity(request, exchange, await self._auth.authenticate(request))

    def authorize(self, request: Request) -> Awaitable[None] | None:
        exchange = request.exchange
        assert isinstance(exchange, ProxyExchange), "the route stage runs first"
        auth = exchange.auth
        if auth is None:
            return None
        if exchange.policy.auth == "token":
            return self._authorize_token(request, exchange, auth)
        exchange.injected = _admit_client(exchange.policy, auth)
        return None

    async def _authorize_token(
        self, request: Request, exchange: ProxyExchange, auth: ConnectionAuth
    ) -> None:
        exchange.injected = await self._tokens.check(request, exchange.policy, auth)

    async def admit(self, request: Request, exchange: ProxyExchange) -> tuple[tuple[str, str], ...]:
        """The headers the caller gets on this route, or GatewayError (re-run for open WebSockets)."""
        policy, auth = exchange.policy, exchange.auth
        assert auth is not None
        if policy.auth == "token":
            # The token names the client (a certificate may authenticate
            # several), so the checker applies the client checks to it.
            return await self._tokens.check(request, policy, auth)
        return _admit_client(policy, auth)

    async def readmit(
        self, request: Request, exchange: ProxyExchange
    ) -> tuple[tuple[str, str], ...]:
        """The same decision again, at the registry and trust state of now (open WebSockets)."""
        exchange.auth = await self._auth.authenticate(request)
        return await self.admit(request, exchange)

    def send_continue(self, request: Request) -> None:
        # 100 Continue only once the policy accepted the request (RFC 9110 §10.1.1).
        if "Expect" in request.headers:
            continue_if_expected(request)

    def identity_headers(self, request: Request) -> None:
        exchange = request.exchange
        assert isinstance(exchange, ProxyExchange), "the route stage runs first"
        policy = exchange.policy
        if request.query_string:
            exchange.target += "?" + request.query_string
        # The upstream's Host as its URL wrote it, never its userinfo (RFC 9110 §7.2).
        host = _caller_authority(request) if policy.preserve_host else exchange.origin.authority
        # A reload between routing and here may have dropped the prefix.
        stripped = self._stripped.get(policy.prefix) or _stripped_on(policy, self._managed)
        incoming = request.headers
        listed = connection_tokens(incoming) if "Connection" in incoming else _NONE_LISTED
        exchange.headers = upstream_request_fields(
            incoming,
            managed=stripped,
            injected=exchange.injected,
            host=host,
            keep=_forwarded(request, via_proxy=self._auth.from_trusted_proxy(request)),
            listed=listed,
        )
        # What upstream_request_fields kept, without another pass over them.
        exchange.has_length = "Content-Length" in incoming and "Transfer-Encoding" not in incoming
        exchange.has_accept = (
            "Accept" in incoming and "accept" not in stripped and "accept" not in listed
        )

    def forward(self, request: Request) -> Awaitable[Response]:
        # The forwarder's coroutine itself, not one wrapped in another.
        exchange = request.exchange
        assert isinstance(exchange, ProxyExchange), "the route stage runs first"
        policy = exchange.policy
        if is_upgrade(request.headers):
            return self._websockets.upgrade(request, exchange)
        origin = exchange.origin
        if policy.upstream_protocol != "http1":
            headers = CIMultiDict(exchange.upstream_fields())
            return self._http2.forward(request, origin, exchange.target, headers, policy)
        return self._forwarder.forward(request, origin, exchange, policy)


def _note_identity(request: Request, exchange: ProxyExchange, auth: ConnectionAuth) -> None:
    exchange.auth = auth
    if auth.identity is not None:
        request.facts.thumbprint = auth.identity.thumbprint
        request.facts.client_id = auth.result.client.client_id if auth.result.client else None


def _admit_client(route: RouteConfig, auth: ConnectionAuth) -> tuple[tuple[str, str], ...]:
    """An ``auth: client`` route: the certificate's client, if the route allows it."""
    client = auth.require_client()
    if route.clients and client.client_id not in route.clients:
        raise access_denied("this client is not allowed on this route")
    return auth.headers


_NONE_LISTED: frozenset[str] = frozenset()


def _stripped_on(route: RouteConfig, managed: frozenset[str]) -> frozenset[str]:
    """Header keys removed from requests on a route: the managed names, and the
    override headers (headers.OVERRIDE_HEADERS) the route does not allow."""
    return managed | (OVERRIDE_HEADERS - route.allow_override_headers)


def _forwarded(request: Request, *, via_proxy: bool = False) -> tuple[tuple[str, str], ...]:
    # The caller's copies were stripped: these are the gateway's own observations.
    # (request.remote is the PROXY protocol's client address where one was sent.)
    remote = request.remote
    if via_proxy and "X-Forwarded-For" in request.headers:
        # A trusted TLS-terminating proxy (forwarded_client_cert) names the
        # client it served: keep its list and append the proxy, as proxies do.
        remote = ", ".join([*request.headers.getall("X-Forwarded-For"), remote])
    return (
        ("X-Forwarded-For", remote),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", _caller_authority(request)),
    )


def _caller_authority(request: Request) -> str:
    # The Host field as sent (framing.py checked it, and that an absolute-form
    # target names the same authority).
    return request.headers.get("Host", "")
