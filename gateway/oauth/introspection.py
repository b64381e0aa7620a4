"""Token introspection (RFC 7662) for the tokens this gateway issues.

The caller is a registered client authenticated by its certificate, exactly
as at the token endpoint (RFC 7662 §2.1 requires some authorization, §4 to
prevent token scanning).  Any token that is not valid now, for any reason,
is ``{"active": false}`` and nothing more (§2.2): the reason is not the
caller's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth import Authenticator
from gateway.config.load import GatewayConfig
from gateway.errors import NO_STORE, registry_unavailable
from gateway.oauth.client_auth import authenticated_form
from gateway.oauth.errors import InvalidRequestError
from gateway.oauth.keys import SigningKeySet
from gateway.oauth.tokens import InvalidToken, verify_access_token
from gateway.pipeline.messages import Request, Response, json_response
from gateway.registry.base import Registry, RegistryUnavailable

_INACTIVE = json.dumps({"active": False})


def _scope_string(scope: Any) -> str:
    """RFC 7662 §2.2: a space-separated string, whatever format the token uses."""
    return " ".join(scope) if isinstance(scope, list) else str(scope)


def introspection_body(claims: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = dict(claims)
    if "scope" in body:
        body["scope"] = _scope_string(body["scope"])
    body["active"] = True
    # RFC 7662 §2.2 token_type, as in the token response.
    body["token_type"] = "Bearer"  # noqa: S105 (a token type, not a secret)
    return body


@dataclass(frozen=True, slots=True)
class IntrospectionEndpoint:
    config: GatewayConfig
    keys: SigningKeySet
    authenticator: Authenticator
    registry: Registry

    async def handle(self, request: Request) -> Response:
        form = (
            await authenticated_form(
                request, self.authenticator, self.config.limits, client_id_required=False
            )
        ).form
        token = form.get("token")
        if token is None:
            raise InvalidRequestError("token is required")
        # token_type_hint (§2.1) needs no handling: access tokens are all we issue.
        return _json(await self._introspect(token))

    async def _introspect(self, token: str) -> str:
        try:
            claims = verify_access_token(
                self.keys,
                token,
                issuer=self.config.issuer,
                audience=self.config.tokens.audience,
            )
        except InvalidToken:
            return _INACTIVE
        try:
            client = await self.registry.get(claims["client_id"])
        except RegistryUnavailable:
            raise registry_unavailable() from None
        # A token outlives nothing it depends on: its client removed or
        # disabled since issue makes it inactive.
        if client is None or not client.enabled:
            return _INACTIVE
        return json.dumps(introspection_body(claims))


def _json(text: str) -> Response:
    # Token metadata is as sensitive as the token: never cached (RFC 7662 §4).
    return json_response(200, text.encode(), NO_STORE)
