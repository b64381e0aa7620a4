"""Discovery (RFC 8414, OpenID Connect Discovery 1.0 §4) and the JWKS (RFC 7517 §5).

Both are public: a client reads them before it has a token, and with
``client_certs: optional`` before it presents a certificate (IdentityModel's
``GetDiscoveryDocumentAsync`` uses the same HttpClient, certificate or not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.app import ListenerContext
from gateway.oauth import paths
from gateway.oauth.errors import MethodNotAllowedError
from gateway.oauth.keys import SigningKeySet

AUTH_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")  # RFC 8705 §2.1, §2.2
GRANT_TYPES = ("client_credentials",)

# Discovery and keys change only with config or key rotation.  Five minutes
# bounds how long a verifier elsewhere may miss a newly added key; rotate by
# publishing the new key (second in tokens.signing_keys) for longer than this
# before moving it first, so no verifier meets a kid it has not fetched.
PUBLIC_CACHE = {"Cache-Control": "public, max-age=300"}
_READ_METHODS = ("GET", "HEAD")


def metadata(issuer: str, base_url: str) -> dict[str, Any]:
    """The authorization server metadata, endpoints on this listener's public URL."""
    return {
        "issuer": issuer,
        "jwks_uri": base_url + paths.JWKS,
        "token_endpoint": base_url + paths.TOKEN,
        "introspection_endpoint": base_url + paths.INTROSPECT,
        "grant_types_supported": list(GRANT_TYPES),
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
    # The public URL is resolved when the listener binds (after the routes
    # are added), so the document is rendered on first use, then reused.
    _rendered: tuple[str, str] | None = field(default=None, init=False)

    def _document(self) -> str:
        base_url = self.listener.public_url
        if self._rendered is None or self._rendered[0] != base_url:
            self._rendered = (base_url, json.dumps(metadata(self.issuer, base_url)))
        return self._rendered[1]

    async def handle_metadata(self, request: web.Request) -> web.Response:
        if request.method not in _READ_METHODS:
            raise MethodNotAllowedError(_READ_METHODS)
        return web.Response(
            text=self._document(), content_type="application/json", headers=PUBLIC_CACHE
        )

    async def handle_jwks(self, request: web.Request) -> web.Response:
        if request.method not in _READ_METHODS:
            raise MethodNotAllowedError(_READ_METHODS)
        # Read per request: a key reload swaps the set and this follows at once.
        return web.Response(
            text=json.dumps(self.keys.jwks()),
            # RFC 7517 §8.5.1 registers application/jwk-set+json; plain JSON is
            # what IdentityServer serves and what every client library accepts.
            content_type="application/json",
            headers=PUBLIC_CACHE,
        )
