"""The OAuth surface of one listener: which path goes to which handler.

These routes are added before the proxy's catch-all, so on every listener
they answer themselves and are never forwarded upstream.  Each path takes
every method and the handler answers 405 itself: otherwise aiohttp would
hand, say, ``GET /connect/token`` on to the proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.app import ListenerContext
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.oauth import paths
from gateway.oauth.discovery import Discovery
from gateway.oauth.introspection import IntrospectionEndpoint
from gateway.oauth.keys import SigningKeySet
from gateway.oauth.token_endpoint import TokenEndpoint
from gateway.observability import facts
from gateway.registry.base import Registry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rendering_errors(handler: Handler) -> Handler:
    """Answer every GatewayError (OAuthError included) in its one rendering."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            facts(request).oauth_outcome = exc.error
            return exc.response()

    return handle


def add_oauth_routes(
    app: web.Application,
    listener: ListenerContext,
    *,
    config: GatewayConfig,
    keys: SigningKeySet,
    registry: Registry,
) -> None:
    discovery = Discovery(config.issuer, keys, listener)
    token = TokenEndpoint(config, keys, listener.authenticator)
    introspection = IntrospectionEndpoint(config, keys, listener.authenticator, registry)
    routes: dict[str, Handler] = {
        paths.OPENID_CONFIGURATION: discovery.handle_metadata,
        paths.OAUTH_SERVER_METADATA: discovery.handle_metadata,
        paths.JWKS: discovery.handle_jwks,
        paths.TOKEN: token.handle,
        paths.MTLS_TOKEN: token.handle,
        paths.INTROSPECT: introspection.handle,
        paths.MTLS_INTROSPECT: introspection.handle,
    }
    for path, handler in routes.items():
        app.router.add_route("*", path, rendering_errors(handler))
