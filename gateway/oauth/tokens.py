"""JWT access tokens (RFC 9068) bound to the client certificate (RFC 8705 §3)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)

from gateway.oauth.keys import SigningKeySet

# RFC 9068 §2.1: "at+jwt" in the typ header; §4 lets resource servers accept
# the full media type too. Explicit typing stops an ID token or any other JWT
# from this issuer being replayed as an access token (RFC 8725 §3.11).
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})

# Claims this module sets itself; extra_claims may not override them.
REGISTERED_CLAIMS = frozenset(
    {"iss", "sub", "client_id", "aud", "scope", "iat", "nbf", "exp", "jti", "cnf"}
)
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# RFC 8705 §3.1: base64url (no padding) of a SHA-256 digest is 43 characters.
_X5T_S256 = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 7515 §7.1: three base64url segments; checked before anything is decoded.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class InvalidToken(Exception):
    """A bearer token was refused. The message is a short reason, safe to log
    and to return in ``error_description``; it never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IssuedToken:
    token: str = field(repr=False)  # a bearer credential: keep it out of reprs and logs
    expires_in: int
    scope: str  # space-delimited, for the token response (RFC 6749 §5.1)
    jti: str
    claims: dict[str, Any]  # a copy of what was signed (for introspection and logs)


def mint_access_token(
    keys: SigningKeySet,
    *,
    issuer: str,
    audience: str | list[str],
    client_id: str,
    scopes: Sequence[str],
    lifetime: int,
    x5t_s256: str | None,
    extra_claims: Mapping[str, Any] = _EMPTY,
    scope_format: Literal["string", "array"] = "string",
    now: float | None = None,
) -> IssuedToken:
    """Sign an RFC 9068 access token with the set's first key."""
    if not issuer or not client_id:
        raise ValueError("issuer and client_id must be non-empty")
    auds = [audience] if isinstance(audience, str) else list(audience)
    if not auds or not all(isinstance(a, str) and a for a in auds):
        raise ValueError("audience must be a non-empty string or list of strings")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        raise ValueError("lifetime must be a positive number of seconds")
    if scope_format not in ("string", "array"):
        raise ValueError("scope_format must be 'string' or 'array'")
    if isinstance(scopes, str):
        raise ValueError("scopes must be a sequence of scope tokens, not a string")
    ordered = list(dict.fromkeys(scopes))  # de-duplicated, request order kept
    bad = [s for s in ordered if not isinstance(s, str) or not _SCOPE_TOKEN.fullmatch(s)]
    if bad:
        raise ValueError(f"invalid scope token(s): {bad!r}")
    if x5t_s256 is not None and not _X5T_S256.fullmatch(x5t_s256):
        raise ValueError("x5t_s256 must be base64url(SHA-256(DER)), 43 characters")
    clash = REGISTERED_CLAIMS.intersection(extra_claims)
    if clash:
        raise ValueError(f"extra_claims may not set registered claims: {sorted(clash)}")

    signing = keys.signing_key  # one read: a concurrent reload cannot split alg/kid/key
    iat = int(time.time() if now is None else now)
    jti = secrets.token_urlsafe(16)  # 128 random bits (RFC 9068 §2.2, RFC 7519 §4.1.7)
    claims: dict[str, Any] = dict(extra_claims)
    claims.update(
        iss=issuer,
        # RFC 9068 §2.2: with no resource owner (client_credentials) the
        # subject is the client itself.
        sub=client_id,
        client_id=client_id,
        aud=audience if isinstance(audience, str) else auds,
        iat=iat,
        nbf=iat,
        exp=iat + lifetime,
        jti=jti,
    )
    if ordered:
        # RFC 9068 §2.2.3 defines a space-delimited string; IdentityServer
        # emits a JSON array, which some of its resource servers expect.
        claims["scope"] = " ".join(ordered) if scope_format == "string" else ordered
    if x5t_s256 is not None:
        # RFC 8705 §3.1 (via RFC 7800 cnf): binds the token to the certificate.
        claims["cnf"] = {"x5t#S256": x5t_s256}

    header = {"typ": TOKEN_TYPE, "alg": signing.alg, "kid": signing.kid}
    token = jwt.encode(
        header, claims, signing.private_key, algorithms=[signing.alg], default_type=None
    )
    return IssuedToken(
        token=token,
        expires_in=lifetime,
        scope=" ".join(ordered),
        jti=jti,
        claims=dict(claims),
    )


def _claim_reason(exc: JoseError) -> str:
    if isinstance(exc, ExpiredTokenError):
        return "token expired"
    if isinstance(exc, MissingClaimError):
        return f"missing claim: {exc.claim}"
    if isinstance(exc, InvalidClaimError):
        return {
            "nbf": "token not yet valid",
            "iat": "token issued in the future",
            "iss": "wrong issuer",
            "aud": "wrong audience",
        }.get(exc.claim, f"invalid claim: {exc.claim}")
    return "invalid claims"


def verify_access_token(
    keys: SigningKeySet,
    token: str,
    *,
    issuer: str,
    audience: str,
    leeway: int = 30,
    max_length: int = 8192,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a token this gateway issued (RFC 9068 §4) and return its claims.

    Certificate binding is the caller's check: compare ``cnf_x5t_s256(claims)``
    with the presented certificate's x5t#S256 (RFC 8705 §3).
    """
    # Cheap structural checks first: a bearer header is attacker-controlled.
    if not isinstance(token, str) or len(token) > max_length:
        raise InvalidToken("token too long" if isinstance(token, str) else "malformed token")
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken("not a compact JWS")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError):
        raise InvalidToken("malformed token") from None

    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES:
        raise InvalidToken("wrong token type")
    if "crit" in header:  # never emitted here; refuse rather than half-understand
        raise InvalidToken("unsupported critical header")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("missing kid")
    key = keys.verification_key(kid)
    if key is None:
        raise InvalidToken("unknown kid")
    # RFC 8725 §3.1: the key decides the algorithm, never the token; this is
    # what defeats "alg": "none" and HS256-keyed-with-the-public-key.
    if header.get("alg") != key.alg:
        raise InvalidToken("algorithm not allowed")
    try:
        decoded = jwt.decode(token, key.private_key, algorithms=[key.alg])
    except BadSignatureError:
        raise InvalidToken("bad signature") from None
    except (JoseError, ValueError):
        raise InvalidToken("malformed token") from None
    claims = decoded.claims
    if not isinstance(claims, dict):
        raise InvalidToken("malformed claims")

    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidToken(f"invalid claim: {name}")
    # RFC 9068 §2.2 makes iss, exp, aud, sub, client_id, iat and jti required.
    registry = jwt.JWTClaimsRegistry(
        now=int(time.time() if now is None else now),
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        client_id={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise InvalidToken(_claim_reason(exc)) from None
    # joserfc accepts a list wherever it compares values; these are strings.
    if not isinstance(claims["iss"], str):
        raise InvalidToken("wrong issuer")
    for name in ("sub", "client_id", "jti"):
        if not isinstance(claims[name], str):
            raise InvalidToken(f"invalid claim: {name}")
    aud = claims["aud"]
    if not isinstance(aud, str) and not (
        isinstance(aud, list) and all(isinstance(a, str) for a in aud)
    ):
        raise InvalidToken("wrong audience")
    scopes_of(claims)
    cnf_x5t_s256(claims)
    return claims


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The token's scopes, from RFC 9068's string or IdentityServer's array."""
    scope = claims.get("scope")
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    raise InvalidToken("invalid claim: scope")


def cnf_x5t_s256(claims: Mapping[str, Any]) -> str | None:
    """The certificate thumbprint the token is bound to (RFC 8705 §3.1), or None."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if not isinstance(thumbprint, str):
        raise InvalidToken("invalid claim: cnf")
    return thumbprint
