"""Certificate paths verified in Python: which trust material vouches for a leaf.

OpenSSL verifies the handshake against one store (``client_ca`` + SPIFFE
bundles + pins) and the stdlib ``ssl`` module of Python 3.11 does not say
which anchor it used (docs/design/client-certificates.md).  Three decisions need that answer:

* an ``X509CertificateName`` or non-SPIFFE SAN secret needs the chain to end in
  ``client_ca``, not in some trust domain's bundle;
* a SPIFFE secret needs the chain to end in its own trust domain's bundle
  (X.509-SVID §5.1): an ID of ``example.org`` issued by ``other.org``'s CA is
  refused;
* a client's ``issuer`` pin (RFC 8705 §7.4) needs the certificate that really
  signed the leaf — the one whose key verifies the leaf's signature — not
  merely a matching issuer DN, which a second CA can carry too.

So paths are re-verified here with ``cryptography``'s verifier against each
pool (intermediates: those forwarded by a load balancer, plus any listed in
the pool's file; with partial chains, as the listener's context allows), and
only when a registry candidate asks: a deployment without bundles and pins
never pays for it on the handshake path.  Forwarded certificates (no
handshake at all) are verified here in full, like OpenSSL would: signatures,
validity at the current time, basicConstraints and keyUsage of issuers, the
leaf's clientAuth extended key usage and digitalSignature key usage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.trust.dn import name_key
from gateway.trust.spiffe import svid_leaf_problem

MAX_INTERMEDIATES = 8


def _issuer_key_usage(
    _policy: Any, _cert: x509.Certificate, ext: x509.ExtensionType | None
) -> None:
    # RFC 5280 §4.2.1.3: an issuer's key must be allowed to sign certificates.
    if isinstance(ext, x509.KeyUsage) and not ext.key_cert_sign:
        raise ValueError("issuer keyUsage lacks keyCertSign")


def _leaf_key_usage(_policy: Any, _cert: x509.Certificate, ext: x509.ExtensionType | None) -> None:
    # OpenSSL's "sslclient" purpose: digitalSignature or keyAgreement when keyUsage is present.
    if isinstance(ext, x509.KeyUsage) and not (ext.digital_signature or ext.key_agreement):
        raise ValueError("client certificate keyUsage lacks digitalSignature")


def _leaf_extended_key_usage(
    _policy: Any, _cert: x509.Certificate, ext: x509.ExtensionType | None
) -> None:
    # OpenSSL's "sslclient" purpose wants clientAuth itself: anyExtendedKeyUsage
    # alone fails the handshake (RFC 5280 §4.2.1.12 allows that), so it fails
    # here too, or a load balancer's path would accept what a handshake refuses.
    if isinstance(ext, x509.ExtendedKeyUsage) and ExtendedKeyUsageOID.CLIENT_AUTH not in ext:
        raise ValueError("client certificate extendedKeyUsage lacks clientAuth")


def _policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    # The webpki defaults want a SAN and an AKI on every certificate
    # (docs/design/names-and-thumbprints.md):
    # enterprise client PKIs often have neither.  These are OpenSSL's rules instead.
    agnostic = xv.Criticality.AGNOSTIC
    ca = (
        xv.ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, agnostic, None)
        .may_be_present(x509.KeyUsage, agnostic, _issuer_key_usage)
    )
    ee = (
        xv.ExtensionPolicy.permit_all()
        .may_be_present(x509.KeyUsage, agnostic, _leaf_key_usage)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _leaf_extended_key_usage)
    )
    return ca, ee


_CA_POLICY, _EE_POLICY = _policies()


@dataclass(frozen=True, slots=True)
class TrustPool:
    """One set of trust anchors: ``client_ca``, or one trust domain's bundle."""

    name: str  # "client_ca" or "spiffe_bundles.<trust domain>"
    anchors: tuple[x509.Certificate, ...]
    _store: xv.Store | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, name: str, anchors: Sequence[x509.Certificate]) -> TrustPool:
        return cls(name, tuple(anchors), xv.Store(list(anchors)) if anchors else None)

    def verify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        now: dt.datetime,
    ) -> tuple[x509.Certificate, ...] | None:
        """The verified path, leaf first and anchor last; None if there is none."""
        if self._store is None:
            return None
        verifier = (
            xv.PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, list(intermediates[:MAX_INTERMEDIATES]))
        except (xv.VerificationError, ValueError):
            return None
        return tuple(verified.chain)


def certificate_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


class CertificateTrust:
    """What the trust material says about one leaf; answers cached, computed on demand.

    ``handshake_verified``: OpenSSL already verified the chain against the
    listener's store (a TLS connection's own certificate); False for forwarded
    certificates, which only this class verifies.
    """

    __slots__ = (
        "_bundles",
        "_cache",
        "_client_ca",
        "_handshake_verified",
        "_intermediates",
        "_leaf",
        "_leaf_der",
        "_now",
    )

    def __init__(
        self,
        leaf: bytes | x509.Certificate,
        *,
        client_ca: TrustPool,
        bundles: Mapping[str, TrustPool],
        intermediates: Sequence[x509.Certificate] = (),
        handshake_verified: bool,
        now: dt.datetime | None = None,
    ) -> None:
        # DER is parsed only if a question needs the certificate itself.
        self._leaf = leaf if isinstance(leaf, x509.Certificate) else None
        self._leaf_der = leaf if isinstance(leaf, bytes) else b""
        self._client_ca = client_ca
        self._bundles = bundles
        self._intermediates = tuple(intermediates)
        self._handshake_verified = handshake_verified
        self._now = now or dt.datetime.now(dt.UTC)
        self._cache: dict[str | None, tuple[x509.Certificate, ...] | None] = {}

    @property
    def leaf(self) -> x509.Certificate:
        if self._leaf is None:
            self._leaf = x509.load_der_x509_certificate(self._leaf_der)
        return self._leaf

    def _pool(self, trust_domain: str | None) -> TrustPool | None:
        if trust_domain is None or not self._bundles:
            # Without spiffe_bundles, client_ca serves every trust domain (one PKI).
            return self._client_ca
        return self._bundles.get(trust_domain)

    def path(self, trust_domain: str | None) -> tuple[x509.Certificate, ...] | None:
        """The verified path to the pool for this trust domain (None: client_ca)."""
        key = trust_domain if self._bundles else None
        if key not in self._cache:
            pool = self._pool(trust_domain)
            self._cache[key] = (
                pool.verify(self.leaf, self._intermediates, self._now) if pool is not None else None
            )
        return self._cache[key]

    # -- the questions registry matching asks (gateway.registry.matching.ChainFacts)

    def chains_to(self, trust_domain: str | None) -> bool:
        if self._handshake_verified and not self._bundles:
            # The listener's store is client_ca (+ pins, which never get here):
            # the handshake already answered, at no cost.
            return True
        return self.path(trust_domain) is not None

    def issuer_matches(self, trust_domain: str | None, dn_key: object, sha256: str | None) -> bool:
        """Was the leaf signed by a CA with this subject (and, if given, fingerprint)?"""
        path = self.path(trust_domain)
        if path is None or len(path) < 2:
            return False
        issuer = path[1]  # its key verified the leaf's signature
        if dn_key is not None and name_key(issuer.subject) != dn_key:
            return False
        return sha256 is None or certificate_sha256(issuer) == sha256

    def trust_domain_known(self, trust_domain: str) -> bool:
        return not self._bundles or trust_domain in self._bundles

    def svid_problem(self) -> str | None:
        return svid_leaf_problem(self.leaf)

    def accepted(self) -> str | None:
        """For a forwarded certificate: None if some pool vouches for it, else why not."""
        if self.path(None) is not None:
            return None
        for trust_domain in self._bundles:
            if self.path(trust_domain) is not None:
                return None
        return "the certificate does not chain to client_ca or a SPIFFE bundle"
