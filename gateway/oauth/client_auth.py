"""Client authentication at the OAuth endpoints: the TLS client certificate only.

RFC 8705 §2: the client proves possession of its key in the TLS handshake and
names itself with ``client_id``; the registry decides whether that certificate
authenticates that client (``tls_client_auth`` for PKI secrets §2.1,
``self_signed_tls_client_auth`` for thumbprint pins §2.2).  A certificate may
authenticate several clients; ``client_id`` picks one of them, never another.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from gateway.auth import Authenticator, ConnectionAuth
from gateway.errors import GatewayError
from gateway.listener.config import LimitsConfig
from gateway.oauth.errors import InvalidClientError, InvalidRequestError, MethodNotAllowedError
from gateway.oauth.forms import read_form
from gateway.ops.observability import facts
from gateway.pipeline.messages import Request
from gateway.registry.matching import ClientMatch

log = logging.getLogger("gateway.oauth")

# RFC 6749 §2.3: a client must not use more than one authentication method.
_OTHER_CREDENTIALS = ("client_secret", "client_assertion", "client_assertion_type")


def client_id_of(request: Request, form: Mapping[str, str]) -> str | None:
    """The client_id the caller names, refusing every other credential.

    RFC 8705 §2 puts ``client_id`` in the form.  IdentityModel, the seed's
    client library, sends it by default as HTTP Basic with an empty password
    (``ClientCredentialStyle.AuthorizationHeader``; RFC 6749 §2.3.1 encoding):
    that carries only a name, no secret, so it is read as ``client_id``.  A
    non-empty password or any other scheme is a credential we do not check,
    and is refused rather than ignored.
    """
    for name in _OTHER_CREDENTIALS:
        if name in form:
            raise InvalidRequestError(
                f"{name} is not accepted: clients authenticate with their TLS certificate"
            )
    client_id = form.get("client_id")
    authorizations = request.headers.getall("Authorization", ())
    if not authorizations:
        return client_id
    if len(authorizations) > 1:
        raise InvalidRequestError("more than one Authorization header")
    basic_id = _basic_client_id(authorizations[0])
    if client_id is not None and client_id != basic_id:
        raise InvalidRequestError("client_id in the form and in the Authorization header differ")
    return basic_id


def _basic_client_id(header: str) -> str:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise InvalidRequestError(
            "clients authenticate with their TLS certificate (RFC 8705): send client_id "
            "in the form body, or as HTTP Basic with an empty password"
        )
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("malformed HTTP Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise InvalidRequestError("malformed HTTP Basic credentials")
    if password:
        raise InvalidRequestError(
            "client secrets are not accepted: clients authenticate with their TLS certificate"
        )
    return unquote_plus(user)  # RFC 6749 §2.3.1: form-urlencoded before Basic encoding


async def connection_auth(request: Request, authenticator: Authenticator) -> ConnectionAuth:
    """The connection's certificate identity; its refusals become invalid_client."""
    try:
        auth = await authenticator.authenticate(request)
    except GatewayError as exc:
        if exc.status >= 500:  # registry unreachable: a retryable 503, not the client's fault
            raise
        raise InvalidClientError(exc.description) from None
    if auth.identity is not None:
        # In the access log whether or not the client is then accepted.
        facts(request).thumbprint = auth.identity.thumbprint
    return auth


def authenticated_client(
    request: Request,
    auth: ConnectionAuth,
    client_id: str | None,
    *,
    client_id_required: bool,
) -> ClientMatch:
    """The client this certificate authenticates as ``client_id``, or invalid_client.

    The token endpoint requires ``client_id`` (RFC 8705 §2).  Introspection
    does not; without it the certificate must name exactly one client.
    Disabled clients and expired secrets never match.
    """
    if auth.identity is None:
        _refuse(request, auth, client_id, "no client certificate")
        raise InvalidClientError("a client certificate is required (RFC 8705 tls_client_auth)")
    if client_id is None and client_id_required:
        _refuse(request, auth, None, "no client_id")
        raise InvalidClientError("client_id is required with tls_client_auth (RFC 8705 §2)")
    if client_id is None:
        client = auth.result.client
        match = auth.result.for_client(client.client_id) if client is not None else None
        if match is None:
            _refuse(
                request, auth, None, auth.result.reason or "certificate matches several clients"
            )
            raise InvalidClientError(
                "the client certificate does not identify one registered client: "
                f"{auth.result.reason}"
            )
        return match
    match = auth.result.for_client(client_id)
    if match is None:
        _refuse(request, auth, client_id, auth.result.reason or "certificate is another client's")
        why = auth.result.reason if auth.result.client is None else "it is another client's"
        raise InvalidClientError(
            f"the client certificate does not authenticate this client_id: {why}"
        )
    return match


def _refuse(request: Request, auth: ConnectionAuth, client_id: str | None, reason: str) -> None:
    log.warning(
        "client authentication failed",
        extra={
            "event": "client_auth_failed",
            "reason": reason,
            "client_id": client_id,
            "thumbprint": auth.identity.thumbprint if auth.identity else None,
            "peer": request.remote,
            "path": request.path,
        },
    )


@dataclass(frozen=True, slots=True)
class AuthenticatedForm:
    form: Mapping[str, str]
    auth: ConnectionAuth
    match: ClientMatch


async def authenticated_form(
    request: Request,
    authenticator: Authenticator,
    limits: LimitsConfig,
    *,
    client_id_required: bool,
) -> AuthenticatedForm:
    """The common start of the token and introspection endpoints (RFC 8705 §2):
    POST only, a bounded form, no other credential, and the client this
    certificate authenticates."""
    if request.method != "POST":
        raise MethodNotAllowedError(["POST"])
    form = await read_form(
        request,
        max_bytes=limits.max_token_request_bytes,
        read_within=limits.header_read_timeout,
    )
    client_id = client_id_of(request, form)
    auth = await connection_auth(request, authenticator)
    match = authenticated_client(request, auth, client_id, client_id_required=client_id_required)
    return AuthenticatedForm(form, auth, match)
