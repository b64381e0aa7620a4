"""OAuth errors: one class per error code, rendered in one place.

Every class is a ``GatewayError``, so ``GatewayError.response()`` gives the
RFC 6749 §5.2 body (``error``, ``error_description``) with ``Cache-Control:
no-store``, whether it is raised by an OAuth endpoint or by the proxy's token
check.  Resource-server errors add the RFC 6750 §3 ``WWW-Authenticate``
challenge, built here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import ClassVar

from gateway.errors import GatewayError

# RFC 6749 §5.2 and RFC 6750 §3: error_description is limited to
# %x20-21 / %x23-5B / %x5D-7E, so it can sit in a quoted-string unescaped.
_UNSAFE_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def safe_description(text: str) -> str:
    return _UNSAFE_DESCRIPTION.sub("?", text)


class OAuthError(GatewayError):
    """Base of the OAuth error codes; subclasses fix ``error`` and ``status``."""

    error_code: ClassVar[str] = "server_error"
    status_code: ClassVar[int] = 500

    def __init__(self, description: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(self.status_code, self.error_code, safe_description(description), headers)


# -- token and introspection endpoints (RFC 6749 §5.2, RFC 7662 §2.3) --------


class InvalidRequestError(OAuthError):
    error_code = "invalid_request"
    status_code = 400


class RequestTooLargeError(InvalidRequestError):
    status_code = 413  # the HTTP status says what to fix; the body stays RFC 6749


class RequestTimeoutError(InvalidRequestError):
    status_code = 408


class MethodNotAllowedError(InvalidRequestError):
    status_code = 405

    def __init__(self, allowed: Iterable[str]) -> None:
        allow = ", ".join(allowed)
        super().__init__(f"use {allow}", {"Allow": allow})


class InvalidClientError(OAuthError):
    # RFC 6749 §5.2 lets this be 400, but 401 is what IdentityServer answers and
    # what clients test for.  No WWW-Authenticate: mTLS has no HTTP auth scheme.
    error_code = "invalid_client"
    status_code = 401


class UnauthorizedClientError(OAuthError):
    error_code = "unauthorized_client"
    status_code = 400


class UnsupportedGrantTypeError(OAuthError):
    error_code = "unsupported_grant_type"
    status_code = 400


class InvalidScopeError(OAuthError):
    error_code = "invalid_scope"
    status_code = 400


class ServerError(OAuthError):
    error_code = "server_error"
    status_code = 500


# -- protected resources (RFC 6750 §3) --------------------------------------


def bearer_challenge(
    error: str | None = None, description: str | None = None, scope: Iterable[str] = ()
) -> str:
    """``WWW-Authenticate: Bearer …`` (RFC 6750 §3). Values are pre-sanitised:
    scope tokens exclude ``"`` and ``\\`` (RFC 6749 §3.3)."""
    params: list[str] = []
    if error is not None:
        params.append(f'error="{error}"')
    if description:
        params.append(f'error_description="{safe_description(description)}"')
    scopes = " ".join(scope)
    if scopes:
        params.append(f'scope="{scopes}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"


class BearerError(OAuthError):
    """An RFC 6750 error: the JSON body plus the matching challenge."""

    def __init__(self, description: str, scope: Iterable[str] = ()) -> None:
        super().__init__(
            description,
            {"WWW-Authenticate": bearer_challenge(self.error_code, description, scope)},
        )


class BearerRequiredError(OAuthError):
    """No bearer token at all: RFC 6750 §3.1 says to send a bare challenge,
    without an error code; the JSON body still tells a human what is missing."""

    error_code = "invalid_token"
    status_code = 401

    def __init__(self, description: str) -> None:
        super().__init__(description, {"WWW-Authenticate": bearer_challenge()})


class BearerInvalidRequestError(BearerError):
    error_code = "invalid_request"
    status_code = 400


class InvalidTokenError(BearerError):
    error_code = "invalid_token"
    status_code = 401


class InsufficientScopeError(BearerError):
    error_code = "insufficient_scope"
    status_code = 403
