"""Certificate identity → registered client.  Pure, and fail closed.

The index maps every lookup key a certificate can present (thumbprint, subject
DN, each SAN) to the secrets that name it, so a lookup costs a handful of dict
probes whatever the number of clients.  A match needs a positive hit on a
secret that is eligible for how the certificate was accepted:

* ``X509CertificateThumbprint`` (RFC 8705 §2.2, self_signed_tls_client_auth)
  matches the exact certificate, whether pinned or CA-issued.
* Every other type (RFC 8705 §2.1, tls_client_auth) relies on the chain having
  verified against ``client_ca``.  A certificate that the TLS layer accepted only
  because it is itself a pinned trust anchor never matches them: otherwise a
  self-signed certificate, pinned for client B, could carry client A's DN.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from gateway.identity import CertificateIdentity
from gateway.registry.model import PKI_SECRET_TYPES, Client, Secret

AuthMethod = Literal["tls_client_auth", "self_signed_tls_client_auth"]
LookupKey = tuple[str, object]


@dataclass(frozen=True, slots=True)
class ClientMatch:
    client: Client
    secret: Secret

    @property
    def auth_method(self) -> AuthMethod:
        if self.secret.type == "X509CertificateThumbprint":
            return "self_signed_tls_client_auth"
        return "tls_client_auth"


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Every enabled client the certificate authenticates, or why there is none."""

    matches: tuple[ClientMatch, ...]
    reason: str  # "" on success; else a short reason for logs

    @property
    def client(self) -> Client | None:
        """The one client the certificate names; None when none or several do."""
        ids = {m.client.client_id for m in self.matches}
        return self.matches[0].client if len(ids) == 1 else None

    def for_client(self, client_id: str) -> ClientMatch | None:
        for m in self.matches:
            if m.client.client_id == client_id:
                return m
        return None


def secret_lookup_key(secret: Secret) -> LookupKey:
    if secret.type == "X509CertificateName":
        assert secret.dn is not None
        return ("dn", secret.dn.key)
    return (secret.type, secret.match_value)


def identity_lookup_keys(identity: CertificateIdentity) -> Iterator[LookupKey]:
    yield ("X509CertificateThumbprint", identity.thumbprint)
    yield ("dn", identity.subject_key)
    for name in identity.sans.dns:
        yield ("X509SanDns", name)
    for uri in identity.sans.uri:
        yield ("X509SanUri", uri)
    for ip in identity.sans.ip:
        yield ("X509SanIp", str(ipaddress.ip_address(ip)))
    for email in identity.sans.email:
        local, _, domain = email.rpartition("@")
        yield ("X509SanEmail", f"{local}@{domain.lower()}")


def evaluate(
    candidates: Iterable[tuple[Client, Secret]],
    identity: CertificateIdentity,
    *,
    pinned: bool,
    now: dt.datetime,
) -> MatchResult:
    """Filter index hits down to the secrets that really authenticate this certificate."""
    matches: list[ClientMatch] = []
    reasons: list[str] = []
    seen: set[tuple[str, int]] = set()
    for client, secret in candidates:
        marker = (client.client_id, id(secret))
        if marker in seen:
            continue
        seen.add(marker)
        if not client.enabled:
            reasons.append(f"client {client.client_id} is disabled")
        elif secret.expired(now):
            reasons.append(f"secret of client {client.client_id} expired")
        elif secret.type in PKI_SECRET_TYPES and pinned:
            reasons.append(f"pinned certificate cannot match {secret.type} of {client.client_id}")
        elif client.issuer is not None and client.issuer.key != identity.issuer_key:
            reasons.append(f"issuer does not match the pin of client {client.client_id}")
        else:
            matches.append(ClientMatch(client, secret))
    if matches:
        return MatchResult(tuple(matches), "")
    return MatchResult((), "; ".join(reasons) or "no registered client matches the certificate")


class ClientIndex:
    """Immutable in-memory index of a set of clients."""

    __slots__ = ("_by_id", "_by_key")

    def __init__(self, clients: Iterable[Client]) -> None:
        self._by_id: dict[str, Client] = {}
        self._by_key: dict[LookupKey, list[tuple[Client, Secret]]] = {}
        for client in clients:
            if client.client_id in self._by_id:
                raise ValueError(f"duplicate client_id {client.client_id!r}")
            self._by_id[client.client_id] = client
            for secret in client.secrets:
                self._by_key.setdefault(secret_lookup_key(secret), []).append((client, secret))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, client_id: str) -> Client | None:
        return self._by_id.get(client_id)

    def clients(self) -> list[Client]:
        return list(self._by_id.values())

    def candidates(self, identity: CertificateIdentity) -> list[tuple[Client, Secret]]:
        hits: list[tuple[Client, Secret]] = []
        for key in identity_lookup_keys(identity):
            hits.extend(self._by_key.get(key, ()))
        return hits

    def match(
        self, identity: CertificateIdentity, *, pinned: bool, now: dt.datetime
    ) -> MatchResult:
        return evaluate(self.candidates(identity), identity, pinned=pinned, now=now)

    def shared_secrets(self) -> list[tuple[LookupKey, list[str]]]:
        """Lookup keys that more than one client claims (ambiguous: check warns)."""
        return [
            (key, sorted({c.client_id for c, _ in hits}))
            for key, hits in self._by_key.items()
            if len({c.client_id for c, _ in hits}) > 1
        ]
