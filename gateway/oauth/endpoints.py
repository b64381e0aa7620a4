"""The OAuth surface of one listener: which path goes to which handler.

The pipeline's endpoints stage (gateway/pipeline/endpoints.py) answers these
paths on every listener before any route is looked up, so they are never
forwarded upstream.  Each handler answers 405 itself for a method it does
not take.
"""

from __future__ import annotations

from gateway.app import Gateway, ListenerContext
from gateway.config.load import GatewayConfig
from gateway.oauth import paths
from gateway.oauth.discovery import Discovery
from gateway.oauth.introspection import IntrospectionEndpoint
from gateway.oauth.keys import SigningKeySet
from gateway.oauth.token_endpoint import TokenEndpoint
from gateway.pipeline.messages import Handler
from gateway.registry.base import Registry


def oauth_endpoints(
    listener: ListenerContext,
    gateway: Gateway,
    *,
    config: GatewayConfig,
    keys: SigningKeySet,
    registry: Registry,
) -> dict[str, Handler]:
    discovery = Discovery(config.issuer, keys, listener, lambda: gateway.config.routes)
    token = TokenEndpoint(config, keys, listener.authenticator)
    introspection = IntrospectionEndpoint(config, keys, listener.authenticator, registry)
    return {
        paths.OPENID_CONFIGURATION: discovery.handle_metadata,
        paths.OAUTH_SERVER_METADATA: discovery.handle_metadata,
        paths.JWKS: discovery.handle_jwks,
        paths.TOKEN: token.handle,
        paths.MTLS_TOKEN: token.handle,
        paths.INTROSPECT: introspection.handle,
        paths.MTLS_INTROSPECT: introspection.handle,
    }
