"""``auth: token`` routes: the gateway as the resource server for its own tokens.

A request passes when its bearer token (RFC 6750 §2.1) verifies against a
published key with this issuer and audience (RFC 9068 §4), is bound to the
certificate on this very connection (RFC 8705 §3), names a client that the
certificate still authenticates, and carries the route's scopes.  Anything
else is refused with the RFC 6750 §3 challenge.
"""

from __future__ import annotations

import hmac
import logging
import re

from gateway.auth import ConnectionAuth
from gateway.errors import access_denied
from gateway.headers import identity_headers
from gateway.oauth.errors import (
    BearerInvalidRequestError,
    BearerRequiredError,
    InsufficientScopeError,
    InvalidTokenError,
)
from gateway.oauth.keys import SigningKeySet
from gateway.oauth.tokens import InvalidToken, cnf_x5t_s256, scopes_of, verify_access_token
from gateway.pipeline.messages import Request
from gateway.proxy.config import HeaderNames, RouteConfig
from gateway.proxy.tokens import TokenChecker

log = logging.getLogger("gateway.oauth")

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(request: Request) -> str:
    """The token from ``Authorization: Bearer``, the one place we accept it."""
    if "access_token" in request.query:
        # RFC 6750 §2.3 (and §5.3): a token in the URI lands in logs and
        # Referer headers.  Refused outright, so it is not forwarded either.
        raise BearerInvalidRequestError(
            "send the access token in the Authorization header, not in the URL (RFC 6750 §2.1)"
        )
    values = request.headers.getall("Authorization", ())
    if not values:
        raise BearerRequiredError("a bearer access token is required (Authorization: Bearer)")
    if len(values) > 1:
        raise BearerInvalidRequestError("more than one Authorization header")
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":  # auth-scheme is case-insensitive (RFC 9110 §11.1)
        raise BearerRequiredError("a bearer access token is required (Authorization: Bearer)")
    credentials = credentials.strip(" ")
    if not _B64TOKEN.fullmatch(credentials):
        raise InvalidTokenError("malformed bearer token")
    return credentials


class BearerTokenChecker(TokenChecker):
    """Verifies certificate-bound access tokens on ``auth: token`` routes."""

    def __init__(
        self, *, keys: SigningKeySet, issuer: str, audience: str, header_names: HeaderNames
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._names = header_names

    async def check(
        self, request: Request, route: RouteConfig, auth: ConnectionAuth
    ) -> tuple[tuple[str, str], ...]:
        token = bearer_token(request)
        try:
            claims = verify_access_token(
                self._keys, token, issuer=self._issuer, audience=self._audience
            )
            bound_to = cnf_x5t_s256(claims)
        except InvalidToken as exc:
            raise self._refuse(request, auth, None, exc.reason) from None
        client_id: str = claims["client_id"]

        # RFC 8705 §3: the token is only good on a connection authenticated
        # with the certificate it was issued to; a stolen token alone is not.
        if bound_to is None:
            raise self._refuse(request, auth, client_id, "token is not certificate-bound")
        if auth.identity is None:
            raise self._refuse(
                request,
                auth,
                client_id,
                "certificate-bound token sent without a client certificate",
            )
        if not hmac.compare_digest(bound_to, auth.identity.x5t_s256):
            raise self._refuse(
                request, auth, client_id, "token is bound to a different client certificate"
            )
        # The registry may have changed since the token was issued: the
        # certificate must still authenticate the token's client, which must
        # still be enabled (the match is cached per connection and registry
        # generation, so this costs no lookup).
        match = auth.result.for_client(client_id)
        if match is None:
            raise self._refuse(
                request, auth, client_id, "the token's client is no longer registered or enabled"
            )
        if route.clients and client_id not in route.clients:
            raise access_denied("this client is not allowed on this route")
        # Scopes the token carries and the client still holds: a scope taken
        # away from a client stops working before its tokens expire.
        granted = scopes_of(claims).intersection(match.client.allowed_scopes)
        if not granted.issuperset(route.scopes):
            raise InsufficientScopeError(
                "the access token lacks a scope this route requires", route.scopes
            )

        if auth.client is not None and auth.client.client_id == client_id:
            return auth.headers  # computed once for this connection
        return identity_headers(self._names, client_id, auth.identity)

    def _refuse(
        self, request: Request, auth: ConnectionAuth, client_id: str | None, reason: str
    ) -> InvalidTokenError:
        log.warning(
            "access token refused",
            extra={
                "event": "token_refused",
                "reason": reason,
                "client_id": client_id,
                "thumbprint": auth.identity.thumbprint if auth.identity else None,
                "peer": request.remote,
                "path": request.path,
            },
        )
        return InvalidTokenError(reason)
