"""The client model, mirroring IdentityServer's ``Client`` and ``Secret``.

Registries written for IdentityServer carry over: ``client_id``,
``allowed_grant_types``, ``allowed_scopes``, ``secrets`` (``type``, ``value``,
``description``, ``expiration``), ``enabled``, ``access_token_lifetime`` and
``claims``; plus an optional ``issuer`` DN (and ``issuer_sha256`` fingerprint)
that pins the issuing CA (RFC 8705 §7.4).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.trust.dn import DnSyntaxError, ParsedDn, parse_dn
from gateway.trust.identity import normalise_thumbprint
from gateway.trust.spiffe import SpiffeIdError, SpiffePattern, is_spiffe, parse_spiffe_pattern

SecretType = Literal[
    "X509CertificateName",
    "X509CertificateThumbprint",
    "X509SanDns",
    "X509SanUri",
    "X509SanIp",
    "X509SanEmail",
]
SECRET_TYPES: Final[tuple[str, ...]] = SecretType.__args__  # type: ignore[attr-defined]

# Secrets that rely on the certificate chain verifying against client_ca:
# RFC 8705 §2.1 (tls_client_auth).  Thumbprint pins are §2.2 (self-signed).
PKI_SECRET_TYPES: Final = frozenset(SECRET_TYPES) - {"X509CertificateThumbprint"}

GRANT_TYPES: Final = frozenset({"client_credentials"})

CLIENT_KEYS: Final = frozenset(
    {
        "client_id",
        "client_name",
        "description",
        "enabled",
        "allowed_grant_types",
        "allowed_scopes",
        "secrets",
        "issuer",
        "issuer_sha256",
        "access_token_lifetime",
        "claims",
    }
)
SECRET_KEYS: Final = frozenset({"type", "value", "description", "expiration"})

# Claims the token service sets itself (RFC 9068 §2.2); a client can't override them.
RESERVED_CLAIMS: Final = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "cnf"}
)


class ClientError(ValueError):
    """Invalid client data; ``problems`` are ``key: message`` relative to the client."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Secret:
    type: SecretType
    value: str  # as written (for export and display); thumbprints normalised
    match_value: str  # normalised comparison form
    description: str | None = None
    expiration: dt.datetime | None = None
    dn: ParsedDn | None = None  # X509CertificateName only
    # X509SanUri whose value is a SPIFFE ID or ID pattern: X.509-SVID rules apply.
    spiffe: SpiffePattern | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expiration is not None and now >= self.expiration


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    secrets: tuple[Secret, ...]
    allowed_grant_types: tuple[str, ...] = ("client_credentials",)
    allowed_scopes: tuple[str, ...] = ()
    enabled: bool = True
    issuer: ParsedDn | None = None
    # RFC 8705 §7.4: SHA-256 (hex) of the issuing CA certificate; tells apart
    # two CAs that share a DN (a re-keyed CA, or another party's).
    issuer_sha256: str | None = None
    access_token_lifetime: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    client_name: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The registry (YAML) form, for export and for Redis documents."""
        data: dict[str, Any] = {"client_id": self.client_id}
        if self.client_name:
            data["client_name"] = self.client_name
        if self.description:
            data["description"] = self.description
        if not self.enabled:
            data["enabled"] = False
        data["allowed_grant_types"] = list(self.allowed_grant_types)
        data["allowed_scopes"] = list(self.allowed_scopes)
        if self.issuer is not None:
            data["issuer"] = self.issuer.text
        if self.issuer_sha256 is not None:
            data["issuer_sha256"] = self.issuer_sha256
        if self.access_token_lifetime is not None:
            data["access_token_lifetime"] = self.access_token_lifetime
        if self.claims:
            data["claims"] = dict(self.claims)
        secrets = []
        for s in self.secrets:
            item: dict[str, Any] = {"type": s.type, "value": s.value}
            if s.description:
                item["description"] = s.description
            if s.expiration is not None:
                item["expiration"] = s.expiration.isoformat()
            secrets.append(item)
        data["secrets"] = secrets
        return data


def normalise_secret_value(kind: str, value: str) -> tuple[str, ParsedDn | None]:
    """Comparison form of a secret value; raises ValueError when malformed."""
    if kind == "X509CertificateName":
        try:
            parsed = parse_dn(value)
        except DnSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return parsed.text, parsed
    if kind == "X509CertificateThumbprint":
        return _thumbprint(value), None
    if kind == "X509SanDns":
        name = value.strip().lower().rstrip(".")
        if not name or " " in name:
            raise ValueError("expected a DNS name")
        return name, None
    if kind == "X509SanUri":
        uri = value.strip()
        if is_spiffe(uri):
            try:
                return str(parse_spiffe_pattern(uri)), None
            except SpiffeIdError as exc:
                raise ValueError(f"invalid SPIFFE ID: {exc}") from None
        if ":" not in uri or " " in uri:
            raise ValueError("expected an absolute URI, e.g. spiffe://example.org/ns/prod/sa/api")
        return uri, None
    if kind == "X509SanIp":
        try:
            return str(ipaddress.ip_address(value.strip())), None
        except ValueError:
            raise ValueError("expected an IPv4 or IPv6 address") from None
    if kind == "X509SanEmail":
        local, at, domain = value.strip().rpartition("@")
        if not at or not local or not domain:
            raise ValueError("expected an email address")
        # RFC 5280 §4.2.1.6: the domain part is case-insensitive, the local part is not.
        return f"{local}@{domain.lower()}", None
    raise ValueError(f"unknown secret type {kind!r} (expected one of {', '.join(SECRET_TYPES)})")


def _thumbprint(value: str) -> str:
    """40 lowercase hex digits from a thumbprint as pasted (openssl ``b5:31:…``,
    Windows ``B5 31 …``); ValueError saying what is wrong otherwise."""
    tp = normalise_thumbprint(value)
    if len(tp) == 40 and all(ch in "0123456789abcdef" for ch in tp):
        return tp
    problem = "expected a SHA-1 thumbprint: 40 hex digits (case, colons and spaces ignored)"
    odd = [ch for ch in tp if ch not in "0123456789abcdef"]
    if odd:
        shown = ", ".join(
            f"U+{ord(ch):04X}" if not ch.isprintable() or not ch.isascii() else repr(ch)
            for ch in dict.fromkeys(odd)
        )
        invisible = any(not ch.isprintable() for ch in odd)
        hint = " (invisible, copied along with it: delete it)" if invisible else ""
        raise ValueError(f"{problem}; it contains {shown}{hint}")
    if len(tp) == 64:
        raise ValueError(f"{problem}; this is 64 digits, a SHA-256: give the SHA-1")
    raise ValueError(f"{problem}; got {len(tp)} digits")


def _parse_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError("expected an ISO 8601 date-time")
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _str_list(value: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{key}: expected a list of strings")
        return ()
    return tuple(value)


def parse_client(data: Any) -> Client:
    """Build a Client from its registry form; raise ClientError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ClientError(["expected a mapping with client_id and secrets"])
    for key in data:
        if key not in CLIENT_KEYS:
            problems.append(f"{key}: unknown key")
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        problems.append("client_id: required, a non-empty string")
        client_id = ""
    elif client_id != client_id.strip() or any(ord(ch) < 0x21 for ch in client_id):
        problems.append("client_id: must not contain spaces or control characters")

    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append("enabled: expected true or false")
        enabled = False

    grants = _str_list(
        data.get("allowed_grant_types", ["client_credentials"]), "allowed_grant_types", problems
    )
    for grant in grants:
        if grant not in GRANT_TYPES:
            problems.append(f"allowed_grant_types: unsupported grant type {grant!r}")
    scopes = _str_list(data.get("allowed_scopes"), "allowed_scopes", problems)

    issuer = None
    if data.get("issuer") is not None:
        try:
            issuer = parse_dn(str(data["issuer"]))
        except DnSyntaxError as exc:
            problems.append(f"issuer: {exc}")

    issuer_sha256 = None
    if data.get("issuer_sha256") is not None:
        fingerprint = normalise_thumbprint(str(data["issuer_sha256"]))
        if len(fingerprint) != 64 or any(ch not in "0123456789abcdef" for ch in fingerprint):
            problems.append("issuer_sha256: expected the CA certificate's SHA-256: 64 hex digits")
        else:
            issuer_sha256 = fingerprint

    lifetime = data.get("access_token_lifetime")
    if lifetime is not None and (
        isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0
    ):
        problems.append("access_token_lifetime: expected a positive number of seconds")
        lifetime = None

    claims = data.get("claims") or {}
    if not isinstance(claims, dict) or not all(isinstance(k, str) for k in claims):
        problems.append("claims: expected a mapping of claim names to values")
        claims = {}
    else:
        for name in sorted(set(claims) & RESERVED_CLAIMS):
            problems.append(f"claims.{name}: set by the token service, cannot be overridden")

    secrets: list[Secret] = []
    raw_secrets = data.get("secrets")
    if not isinstance(raw_secrets, list) or not raw_secrets:
        problems.append("secrets: required, a list of at least one certificate secret")
        raw_secrets = []
    for i, raw in enumerate(raw_secrets):
        where = f"secrets[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping with type and value")
            continue
        for key in raw:
            if key not in SECRET_KEYS:
                problems.append(f"{where}.{key}: unknown key")
        kind = raw.get("type")
        value = raw.get("value")
        if kind not in SECRET_TYPES:
            problems.append(
                f"{where}.type: expected one of {', '.join(SECRET_TYPES)}, got {kind!r}"
            )
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}.value: required, a non-empty string")
            continue
        try:
            match_value, dn = normalise_secret_value(kind, value)
        except ValueError as exc:
            problems.append(f"{where}.value: {exc}")
            continue
        expiration = None
        if raw.get("expiration") is not None:
            try:
                expiration = _parse_time(raw["expiration"])
            except ValueError as exc:
                problems.append(f"{where}.expiration: {exc}")
        description = raw.get("description")
        secrets.append(
            Secret(
                type=kind,
                # A thumbprint is kept (and so written back, to YAML or Redis)
                # in its one canonical form; other values as written.
                value=match_value if kind == "X509CertificateThumbprint" else value,
                match_value=match_value,
                description=str(description) if description is not None else None,
                expiration=expiration,
                dn=dn,
                spiffe=parse_spiffe_pattern(match_value)
                if kind == "X509SanUri" and is_spiffe(match_value)
                else None,
            )
        )
    if problems:
        raise ClientError(problems)
    return Client(
        client_id=client_id,
        secrets=tuple(secrets),
        allowed_grant_types=grants,
        allowed_scopes=scopes,
        enabled=enabled,
        issuer=issuer,
        issuer_sha256=issuer_sha256,
        access_token_lifetime=lifetime,
        claims=claims,
        client_name=str(data["client_name"]) if data.get("client_name") else None,
        description=str(data["description"]) if data.get("description") else None,
    )
