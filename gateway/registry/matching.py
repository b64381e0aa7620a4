"""Certificate identity → registered client.  Pure, and fail closed.

The index maps every lookup key a certificate can present (thumbprint, subject
DN, each SAN) to the secrets that name it, so a lookup costs a handful of dict
probes whatever the number of clients.  A match needs a positive hit on a
secret that is eligible for how the certificate was accepted:

* ``X509CertificateThumbprint`` (RFC 8705 §2.2, self_signed_tls_client_auth)
  matches the exact certificate, whatever its chain or extensions.
* Every other type (RFC 8705 §2.1, tls_client_auth) relies on the chain having
  verified against ``client_ca``, and never matches a certificate that can
  issue certificates (``CertificateIdentity.is_ca``, RFC 5280 §4.2.1.9).  A
  certificate whose chain did not verify (``exact_only``) never matches them:
  otherwise a self-signed certificate could carry a PKI client's DN.
* A SPIFFE ``X509SanUri`` secret (value ``spiffe://...``) follows X.509-SVID:
  exactly one URI SAN (§2), a leaf key usage (§4.3), and a chain to the
  bundle of that ID's own trust domain (§5.1).  Wildcards (``.../ns/prod/*``)
  are indexed by prefix, and a certificate's ID is looked up under each of
  its ancestor paths: one probe per path segment, not one per pattern.
* A client's ``issuer`` / ``issuer_sha256`` pin (RFC 8705 §7.4) is checked
  against the CA whose key verified the leaf's signature (``ChainFacts``), so
  a second CA with the same DN does not pass.

``ChainFacts`` (gateway/trust/chain.py) answers the trust questions on demand; a
caller that passes none (unit tests of the index alone) gets the DN-only
issuer comparison and no chain checks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.registry.model import PKI_SECRET_TYPES, Client, Secret
from gateway.trust.identity import CertificateIdentity
from gateway.trust.spiffe import (
    SpiffeIdError,
    is_spiffe,
    normalise_uri_san,
    parse_spiffe_id,
    prefix_lookup_values,
)

AuthMethod = Literal["tls_client_auth", "self_signed_tls_client_auth"]
LookupKey = tuple[str, object]
SPIFFE_PREFIX = "SpiffePrefix"  # lookup-key kind of wildcard SPIFFE secrets


class ChainFacts(Protocol):
    """Which trust material vouches for the certificate (gateway/trust/chain.py)."""

    def chains_to(self, trust_domain: str | None) -> bool:
        """Chain verified to this trust domain's bundle (None: to client_ca)."""
        ...

    def issuer_matches(
        self, trust_domain: str | None, dn_key: object, sha256: str | None
    ) -> bool: ...

    def trust_domain_known(self, trust_domain: str) -> bool: ...

    def svid_problem(self) -> str | None: ...


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
    # The one client the certificate names; None when none or several do.
    # Worked out once: it is read on every request of the connection.
    client: Client | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        ids = {m.client.client_id for m in self.matches}
        object.__setattr__(self, "client", self.matches[0].client if len(ids) == 1 else None)

    def for_client(self, client_id: str) -> ClientMatch | None:
        for m in self.matches:
            if m.client.client_id == client_id:
                return m
        return None


def secret_lookup_key(secret: Secret) -> LookupKey:
    if secret.type == "X509CertificateName":
        assert secret.dn is not None
        return ("dn", secret.dn.key)
    if secret.spiffe is not None and secret.spiffe.wildcard:
        return (SPIFFE_PREFIX, secret.spiffe.lookup_value)
    return (secret.type, secret.match_value)


def identity_lookup_keys(identity: CertificateIdentity) -> Iterator[LookupKey]:
    yield ("X509CertificateThumbprint", identity.thumbprint)
    yield ("dn", identity.subject_key)
    for name in identity.sans.dns:
        yield ("X509SanDns", name)
    for uri in identity.sans.uri:
        yield ("X509SanUri", normalise_uri_san(uri))
    if len(identity.sans.uri) == 1 and is_spiffe(identity.sans.uri[0]):
        try:
            spiffe_id = parse_spiffe_id(identity.sans.uri[0])
        except SpiffeIdError:
            pass
        else:
            for prefix in prefix_lookup_values(spiffe_id):
                yield (SPIFFE_PREFIX, prefix)
    for ip in identity.sans.ip:
        yield ("X509SanIp", str(ipaddress.ip_address(ip)))
    for email in identity.sans.email:
        local, _, domain = email.rpartition("@")
        yield ("X509SanEmail", f"{local}@{domain.lower()}")


def _spiffe_problem(
    secret: Secret, identity: CertificateIdentity, chains: ChainFacts | None
) -> tuple[str | None, str | None]:
    """(why the SVID fails this secret or None, its trust domain)."""
    assert secret.spiffe is not None
    if len(identity.sans.uri) != 1:
        return "an X.509-SVID must have exactly one URI SAN (X.509-SVID §2)", None
    try:
        spiffe_id = parse_spiffe_id(identity.sans.uri[0])
    except SpiffeIdError as exc:
        return f"not a valid SPIFFE ID: {exc}", None
    if not secret.spiffe.matches(spiffe_id):
        return "SPIFFE ID does not match", None
    domain = spiffe_id.trust_domain
    if chains is not None:
        problem = chains.svid_problem()
        if problem is not None:
            return problem, domain
        if not chains.trust_domain_known(domain):
            return f"no SPIFFE bundle for trust domain {domain}", domain
        if not chains.chains_to(domain):
            return f"not issued under the bundle of trust domain {domain} (X.509-SVID §5.1)", domain
    return None, domain


def _issuer_pinned_ok(
    client: Client,
    identity: CertificateIdentity,
    chains: ChainFacts | None,
    trust_domain: str | None,
) -> bool:
    """RFC 8705 §7.4: only certificates from the CA the client names."""
    if client.issuer is None and client.issuer_sha256 is None:
        return True
    if chains is None:
        # No chain knowledge (index unit tests): the DN alone, and a
        # fingerprint pin cannot be checked, so it fails closed.
        return client.issuer_sha256 is None and (
            client.issuer is not None and client.issuer.key == identity.issuer_key
        )
    dn_key = client.issuer.key if client.issuer is not None else None
    return chains.issuer_matches(trust_domain, dn_key, client.issuer_sha256)


def evaluate(
    candidates: Iterable[tuple[Client, Secret]],
    identity: CertificateIdentity,
    *,
    exact_only: bool,
    now: dt.datetime,
    chains: ChainFacts | None = None,
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
            continue
        if secret.expired(now):
            reasons.append(f"secret of client {client.client_id} expired")
            continue
        if secret.type in PKI_SECRET_TYPES and exact_only:
            reasons.append(
                f"an unverified certificate cannot match {secret.type} of {client.client_id}"
            )
            continue
        if secret.type in PKI_SECRET_TYPES and identity.is_ca:
            # RFC 5280 §4.2.1.9: a certificate that can issue is never a PKI
            # client, or its key could mint more of them.  A thumbprint names
            # exactly one certificate, so there its extensions do not matter.
            reasons.append(
                f"certificate can issue certificates, so it cannot match {secret.type} "
                f"of {client.client_id}"
            )
            continue
        trust_domain: str | None = None
        if secret.spiffe is not None:
            problem, trust_domain = _spiffe_problem(secret, identity, chains)
            if problem is not None:
                reasons.append(f"{problem} (client {client.client_id})")
                continue
        elif secret.type in PKI_SECRET_TYPES and chains is not None and not chains.chains_to(None):
            reasons.append(
                f"certificate does not chain to client_ca ({secret.type} of {client.client_id})"
            )
            continue
        if not _issuer_pinned_ok(client, identity, chains, trust_domain):
            reasons.append(f"issuer does not match the pin of client {client.client_id}")
            continue
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
        self,
        identity: CertificateIdentity,
        *,
        exact_only: bool,
        now: dt.datetime,
        chains: ChainFacts | None = None,
    ) -> MatchResult:
        return evaluate(
            self.candidates(identity), identity, exact_only=exact_only, now=now, chains=chains
        )

    def shared_secrets(self) -> list[tuple[LookupKey, list[str]]]:
        """Lookup keys that more than one client claims (ambiguous: check warns)."""
        return [
            (key, sorted({c.client_id for c, _ in hits}))
            for key, hits in self._by_key.items()
            if len({c.client_id for c, _ in hits}) > 1
        ]
