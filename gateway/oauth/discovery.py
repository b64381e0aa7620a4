"""Discovery (RFC 8414) and the JWKS (RFC 7517 §5).

Both are public: a client reads them before it has a token, and with
``client_certs: optional`` before it presents a certificate (IdentityModel's
``GetDiscoveryDocumentAsync`` uses the same HttpClient, certificate or not).

The one document is RFC 8414 authorization server metadata.  It is also
served at ``/.well-known/openid-configuration`` because IdentityModel and
openid-client look there first, but it claims nothing of OpenID Connect: the
gateway issues no ID tokens and has no authorization or userinfo endpoint,
so ``subject_types_supported`` and ``id_token_signing_alg_values_supported``
(required of an OpenID provider, OIDC Discovery §3) are deliberately absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.app import ListenerContext
from gateway.oauth import paths
from gateway.oauth.errors import MethodNotAllowedError
from gateway.oauth.keys import SigningKeySet
from gateway.pipeline.messages import Request, Response, json_response
from gateway.proxy.config import RouteConfig

AUTH_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")  # RFC 8705 §2.1, §2.2
GRANT_TYPES = ("client_credentials",)

# Discovery and keys change only with config or key rotation.  Five minutes
# bounds how long a verifier elsewhere may miss a newly added key; rotate by
# publishing the new key (second in tokens.signing_keys) for longer than this
# before moving it first, so no verifier meets a kid it has not fetched.
PUBLIC_CACHE = {"Cache-Control": "public, max-age=300"}
_READ_METHODS = ("GET", "HEAD")


# RFC 8414 §2 makes response_types_supported REQUIRED even for a server without
# an authorization endpoint.  "none" (OAuth 2.0 Multiple Response Type
# Encoding Practices §4) is the one value that promises no code or token from
# one; no authorization_endpoint is published, and Authlib's validator, like
# RFC 8414, needs none when no grant type uses it.
RESPONSE_TYPES = ("none",)


def route_scopes(routes: tuple[RouteConfig, ...]) -> list[str]:
    """The scopes the gateway's own routes require (RFC 8414 §2: a server MAY
    leave out others its clients are allowed, as the registry's are here)."""
    return sorted({scope for route in routes for scope in route.scopes})


def metadata(issuer: str, base_url: str, scopes: list[str] | None = None) -> dict[str, Any]:
    """The authorization server metadata, endpoints on this listener's public URL."""
    return {
        "issuer": issuer,
        "jwks_uri": base_url + paths.JWKS,
        "token_endpoint": base_url + paths.TOKEN,
        "introspection_endpoint": base_url + paths.INTROSPECT,
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": list(RESPONSE_TYPES),
        "scopes_supported": scopes or [],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
        # RFC 8705 §3.3: every token this server issues is certificate-bound.
        "tls_client_certificate_bound_access_tokens": True,
        # RFC 8705 §5: where a client using mTLS must send its requests.
        "mtls_endpoint_aliases": {
            "token_endpoint": base_url + paths.MTLS_TOKEN,
            "introspection_endpoint": base_url + paths.MTLS_INTROSPECT,
        },
    }


@dataclass
class Discovery:
    """Serves the metadata at both well-known paths, and the JWKS, on one listener."""

    issuer: str
    keys: SigningKeySet
    listener: ListenerContext
    # The routes of the running config (a reload swaps them): their scopes are published.
    routes: Callable[[], tuple[RouteConfig, ...]]
    # The public URL is resolved when the listener binds (after the routes
    # are added), so the document is rendered on first use, then reused.
    # Keyed by the route table too: a config reload can change the scopes.
    _rendered: tuple[str, tuple[RouteConfig, ...], str] | None = field(default=None, init=False)

    def _document(self, routes: tuple[RouteConfig, ...]) -> str:
        base_url = self.listener.public_url
        rendered = self._rendered
        if rendered is None or rendered[0] != base_url or rendered[1] is not routes:
            document = metadata(self.issuer, base_url, route_scopes(routes))
            rendered = self._rendered = (base_url, routes, json.dumps(document))
        return rendered[2]

    async def handle_metadata(self, request: Request) -> Response:
        if request.method not in _READ_METHODS:
            raise MethodNotAllowedError(_READ_METHODS)
        routes = self.routes()
        return json_response(200, self._document(routes).encode(), PUBLIC_CACHE)

    async def handle_jwks(self, request: Request) -> Response:
        if request.method not in _READ_METHODS:
            raise MethodNotAllowedError(_READ_METHODS)
        # Read per request: a key reload swaps the set and this follows at once.
        # RFC 7517 §8.5.1 registers application/jwk-set+json; plain JSON is
        # what IdentityServer serves and what every client library accepts.
        return json_response(200, json.dumps(self.keys.jwks()).encode(), PUBLIC_CACHE)
