"""The token endpoint: RFC 6749 §4.4 client_credentials with RFC 8705 mTLS.

Checks run in the order that tells a caller the most useful thing first:
request syntax (invalid_request), then who is asking (invalid_client), then
what is asked for (unsupported_grant_type, unauthorized_client, invalid_scope).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.auth import Authenticator
from gateway.config.load import GatewayConfig
from gateway.errors import NO_STORE
from gateway.oauth.client_auth import authenticated_form
from gateway.oauth.errors import (
    InvalidRequestError,
    InvalidScopeError,
    ServerError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from gateway.oauth.keys import SigningKeySet
from gateway.oauth.tokens import mint_access_token
from gateway.ops.observability import facts
from gateway.pipeline.messages import Request, Response, json_response
from gateway.registry.model import Client

log = logging.getLogger("gateway.oauth")

SUPPORTED_GRANT_TYPES = ("client_credentials",)
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def requested_scopes(requested: str | None, client: Client) -> Sequence[str]:
    """RFC 6749 §3.3: the scopes to grant; all the client's scopes when none is asked for."""
    if requested is None:
        return client.allowed_scopes
    # Space is the only delimiter (§3.3); tabs or other whitespace are malformed.
    scopes = [s for s in requested.split(" ") if s]
    if not scopes:
        raise InvalidScopeError("scope names no scope")
    bad = [s for s in scopes if not _SCOPE_TOKEN.fullmatch(s)]
    if bad:
        raise InvalidScopeError("scope contains characters RFC 6749 §3.3 does not allow")
    allowed = frozenset(client.allowed_scopes)
    refused = [s for s in scopes if s not in allowed]
    if refused:
        raise InvalidScopeError(f"scope not allowed for this client: {' '.join(sorted(refused))}")
    return scopes


@dataclass(frozen=True, slots=True)
class TokenEndpoint:
    """Serves POST /connect/token (and its mTLS alias) on one listener."""

    config: GatewayConfig
    keys: SigningKeySet
    authenticator: Authenticator

    async def handle(self, request: Request) -> Response:
        authenticated = await authenticated_form(
            request, self.authenticator, self.config.limits, client_id_required=True
        )
        form, auth, match = authenticated.form, authenticated.auth, authenticated.match
        assert auth.identity is not None  # authenticated_client refuses anonymous callers
        client = match.client

        grant_type = form.get("grant_type")
        if grant_type is None:
            raise InvalidRequestError("grant_type is required")
        if grant_type not in SUPPORTED_GRANT_TYPES:
            raise UnsupportedGrantTypeError("only client_credentials is supported")
        if grant_type not in client.allowed_grant_types:
            raise UnauthorizedClientError(f"this client may not use {grant_type}")
        scopes = requested_scopes(form.get("scope"), client)

        tokens = self.config.tokens
        try:
            issued = mint_access_token(
                self.keys,
                issuer=self.config.issuer,
                audience=tokens.audience,
                client_id=client.client_id,
                scopes=scopes,
                lifetime=client.access_token_lifetime or tokens.lifetime,
                # RFC 8705 §3.1: bind the token to the certificate just presented.
                x5t_s256=auth.identity.x5t_s256,
                extra_claims=client.claims,
                scope_format=tokens.scope_format,
            )
        except ValueError as exc:
            # Only registry data can reach this (the request's scopes were
            # checked above): a server-side fault, logged for the operator.
            log.error("cannot issue a token to %s: %s", client.client_id, exc)
            raise ServerError("the token could not be issued") from None
        if log.isEnabledFor(logging.DEBUG):
            # DEBUG, like IdentityServer's success events (off by default): one
            # log line per token took ES256 from ~8,700 to ~3,600 tokens/s in
            # bench/tokens.py.  Refusals are logged at WARNING, with the
            # reason and the thumbprint.
            log.debug(
                "token issued",
                extra={
                    "event": "token_issued",
                    "client_id": client.client_id,
                    "auth_method": match.auth_method,
                    "jti": issued.jti,
                    "scope": issued.scope,
                    "thumbprint": auth.identity.thumbprint,
                },
            )
        outcome = facts(request)
        outcome.oauth_outcome = "issued"
        outcome.client_id = client.client_id
        outcome.thumbprint = auth.identity.thumbprint
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        }
        # RFC 6749 §5.1: responses carrying tokens must not be cached.
        return json_response(200, json.dumps(body).encode(), NO_STORE)
