"""TLS listeners: trust material, server contexts, and swapping both without restart.

The handshake itself runs in ``gateway.listener`` (pyOpenSSL over memory
BIOs, with a verify callback that lets every presented certificate complete
the handshake and records OpenSSL's verdict).  This module loads what the
contexts are built from:

* Trust anchors are the CA certificates of ``client_ca`` and of the SPIFFE
  bundles, nothing else.  A leaf is never an anchor: a self-issued client is
  admitted by its registry thumbprint alone (exact certificate, proof of
  possession by the handshake), so no registered certificate can issue more.
* Each new connection takes the context of the material in force; a reload
  builds new material and swaps one reference.  A failed reload keeps the old.
* A resumed session skips chain verification, so resumed connections are
  re-checked against the current material in Python (``TrustState.accepts``).
* Which pool vouches for a certificate is decided per registry secret in
  Python (gateway/trust/chain.py, ``TrustState.chain_facts``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from gateway.lifecycle import ReloadableBase, ReloadFailed
from gateway.listener.config import TlsConfig
from gateway.listener.handshakes import HandshakeStats
from gateway.listener.tls_context import ALPN_PROTOCOLS, build_server_context, openssl_reason
from gateway.trust.chain import CertificateTrust, TrustPool
from gateway.trust.dn import format_name, name_key
from gateway.trust.identity import CertificateIdentity, can_sign_certificates, sha1_thumbprint

log = logging.getLogger("gateway.tls")


class TlsMaterialError(ReloadFailed):
    """Certificates or keys that cannot be used; ``problems`` name file and fault."""


def load_pem_certificates(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        if b"-----BEGIN CERTIFICATE-----" not in data:
            kind = "a private key" if b"PRIVATE KEY-----" in data else "PEM without a certificate"
            raise ValueError(f"this is {kind}, not a certificate")
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_spiffe_bundle(path: Path) -> list[x509.Certificate]:
    """A trust domain's CA certificates: PEM, or a SPIFFE bundle (JWK Set, ``x509-svid`` keys).

    SPIFFE Trust Domain and Bundle §4: each X.509 authority is a JWK with
    ``use: x509-svid`` and its certificate in ``x5c``.
    """
    data = path.read_bytes()
    if not data.lstrip().startswith(b"{"):
        return load_pem_certificates(path)
    try:
        document = json.loads(data)
        keys = document["keys"]
        return [
            x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0], validate=True))
            for key in keys
            if isinstance(key, dict) and key.get("use") == "x509-svid"
        ]
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as exc:
        raise ValueError(f"not a SPIFFE bundle (JWK Set with x509-svid keys): {exc}") from None


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """All CRLs in a file: PEM (one or several) or a single DER CRL."""
    data = path.read_bytes()
    if b"-----BEGIN" not in data:
        return [x509.load_der_x509_crl(data)]
    crls = []
    for block in data.split(b"-----END X509 CRL-----")[:-1]:
        crls.append(x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n"))
    if not crls:
        raise ValueError("no X509 CRL in the file")
    return crls


@dataclass(frozen=True, slots=True)
class TrustState:
    """The trust material in force: what a resumed session is re-checked against."""

    ca_certificates: tuple[x509.Certificate, ...]
    generation: int
    # Revocation is checked here, not by OpenSSL: its CRL check fails every
    # certificate whose issuer has no CRL, which would lock out pinned clients.
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    # The same anchors, ready for path verification (chain.py).
    client_ca_pool: TrustPool = field(default_factory=lambda: TrustPool.of("client_ca", ()))
    bundle_pools: Mapping[str, TrustPool] = field(default_factory=dict)

    def chain_facts(
        self,
        leaf: bytes | x509.Certificate,
        *,
        intermediates: Sequence[x509.Certificate] = (),
        handshake_verified: bool,
    ) -> CertificateTrust:
        return CertificateTrust(
            leaf,
            client_ca=self.client_ca_pool,
            bundles=self.bundle_pools,
            intermediates=intermediates,
            handshake_verified=handshake_verified,
        )

    def is_revoked(self, identity: CertificateIdentity) -> bool:
        leaf_issuer = identity.issuer_key
        for crl in self.crls:
            if name_key(crl.issuer) != leaf_issuer:
                continue
            if crl.get_revoked_certificate_by_serial_number(identity.serial_number) is not None:
                return True
        return False

    def accepts(self, identity: CertificateIdentity) -> bool:
        """Would the current trust anchors vouch for this leaf (issued directly by one)?

        Used only for resumed sessions, where OpenSSL did not verify against the
        current store.  Intermediates must then be in ``client_ca``.  A leaf it
        does not vouch for is treated like any unverified certificate: only an
        exact thumbprint secret can match it.
        """
        if not identity.valid_at(dt.datetime.now(dt.UTC)):
            return False
        leaf = x509.load_der_x509_certificate(identity.der)
        bundled = (ca for pool in self.bundle_pools.values() for ca in pool.anchors)
        for ca in (*self.ca_certificates, *bundled):
            if ca.subject != leaf.issuer:
                continue
            try:
                leaf.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return True
        return False


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    context: SSL.Context
    trust: TrustState
    server_not_after: dt.datetime
    server_subject: str = ""
    # Deprecated tls.pinned_certs and leaves found in client_ca: read, never trusted.
    ignored_pins: tuple[str, ...] = ()


def load_material(
    tls: TlsConfig,
    where: str,
    generation: int = 1,
    *,
    alpn: Sequence[bytes] = ALPN_PROTOCOLS,
) -> TlsMaterial:
    """Build a server context from files; every problem is reported at once.

    ``alpn``: the protocols offered, in preference order (listeners[].http2).
    """
    problems: list[str] = []
    server_not_after = dt.datetime.now(dt.UTC)
    server_subject = ""
    try:
        server_cert = load_pem_certificates(tls.cert)[0]
        server_not_after = server_cert.not_valid_after_utc
        server_subject = format_name(server_cert.subject)
    except (OSError, ValueError, IndexError) as exc:
        problems.append(f"{where}.cert: cannot read {tls.cert}: {exc or 'no certificate'}")

    ca_certs: list[x509.Certificate] = []
    ignored: list[str] = []
    if tls.client_ca is not None:
        try:
            for cert in load_pem_certificates(tls.client_ca):
                if can_sign_certificates(cert):
                    ca_certs.append(cert)
                else:
                    # A leaf is never a trust anchor (it would be trusted as
                    # itself under partial chains): register its thumbprint.
                    ignored.append(
                        f"{where}.client_ca: '{format_name(cert.subject)}' is not a CA "
                        "certificate and is ignored; register its thumbprint "
                        f"({sha1_thumbprint(cert.public_bytes(serialization.Encoding.DER))}) "
                        "as an X509CertificateThumbprint secret instead"
                    )
            if not ca_certs and not ignored:
                problems.append(f"{where}.client_ca: no certificates in {tls.client_ca}")
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.client_ca: cannot read {tls.client_ca}: {_one_line(exc)}")
    for i, path in enumerate(tls.pinned_certs):
        try:
            certs = load_pem_certificates(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.pinned_certs[{i}]: cannot read {path}: {_one_line(exc)}")
            continue
        for cert in certs:
            thumbprint = sha1_thumbprint(cert.public_bytes(serialization.Encoding.DER))
            ignored.append(
                f"{where}.pinned_certs[{i}]: deprecated and no longer needed: a client's "
                f"X509CertificateThumbprint secret ({thumbprint}) alone admits "
                f"'{format_name(cert.subject)}'; remove the key"
            )

    crls: list[x509.CertificateRevocationList] = []
    if tls.crl is not None:
        try:
            crls = load_crls(tls.crl)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.crl: cannot read {tls.crl}: {_one_line(exc)}")
        for crl in crls:
            issuers = [ca for ca in ca_certs if ca.subject == crl.issuer]
            if not any(crl.is_signature_valid(ca.public_key()) for ca in issuers):  # type: ignore[arg-type]
                problems.append(
                    f"{where}.crl: CRL of '{format_name(crl.issuer)}' is not signed by a CA in client_ca"
                )

    bundles: dict[str, list[x509.Certificate]] = {}
    for domain, path in tls.spiffe_bundles:
        try:
            certs = load_spiffe_bundle(path)
        except (OSError, ValueError) as exc:
            problems.append(
                f"{where}.spiffe_bundles.{domain}: cannot read {path}: {_one_line(exc)}"
            )
            continue
        if not certs:
            problems.append(f"{where}.spiffe_bundles.{domain}: no certificates in {path}")
        for cert in certs:
            if not can_sign_certificates(cert):
                problems.append(
                    f"{where}.spiffe_bundles.{domain}: {path}: '{format_name(cert.subject)}' "
                    "is not a CA certificate"
                )
        bundles[domain] = certs

    context: SSL.Context | None = None
    if not any(p.startswith(f"{where}.cert:") for p in problems):
        try:
            context = build_server_context(
                cert=tls.cert,
                key=tls.key,
                anchors=[*ca_certs, *(c for certs in bundles.values() for c in certs)],
                client_certs=tls.client_certs,
                min_version=tls.min_version,
                untrusted=tls.untrusted_certificates,
                alpn=alpn,
            )
        except (OSError, SSL.Error, ValueError) as exc:
            problems.append(
                f"{where}.cert: cannot use {tls.cert} with key {tls.key}: {openssl_reason(exc)}"
            )
    if problems:
        raise TlsMaterialError(problems)
    assert context is not None
    return TlsMaterial(
        context=context,
        trust=TrustState(
            tuple(ca_certs),
            generation,
            tuple(crls),
            client_ca_pool=TrustPool.of("client_ca", ca_certs),
            bundle_pools={
                domain: TrustPool.of(f"spiffe_bundles.{domain}", certs)
                for domain, certs in bundles.items()
            },
        ),
        server_not_after=server_not_after,
        server_subject=server_subject,
        ignored_pins=tuple(ignored),
    )


def _one_line(exc: BaseException) -> str:
    # cryptography's Rust parser errors are multi-line debug dumps.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if any(m in text for m in ("ParseError", "UnexpectedTag", "InvalidData", "Unable to load PEM")):
        return "not a PEM or DER certificate file"
    return text


class ListenerTls(ReloadableBase):
    """The listening context of one listener, and the material it swaps in."""

    def __init__(
        self,
        tls: TlsConfig,
        where: str,
        *,
        name: str = "tls",
        alpn: Sequence[bytes] = ALPN_PROTOCOLS,
    ) -> None:
        super().__init__(
            name=name,
            logger=log,
            failure=f"TLS reload failed for {where}, keeping current material",
        )
        self._config = tls
        self._where = where
        self._alpn = tuple(alpn)  # listeners[].http2: h2 offered first
        self._material = load_material(tls, where, alpn=self._alpn)
        self.handshakes = HandshakeStats()

    @property
    def handshakes_started(self) -> int:
        return self.handshakes.started

    def context(self) -> SSL.Context:
        """The context for a new connection: the material in force now."""
        return self._material.context

    def watched_files(self) -> tuple[Path, ...]:
        config = self._config
        optional = (config.client_ca, config.crl)
        return (
            config.cert,
            config.key,
            *(path for path in optional if path is not None),
            *config.pinned_certs,
            *(path for _, path in config.spiffe_bundles),
        )

    @property
    def material(self) -> TlsMaterial:
        return self._material

    @property
    def trust(self) -> TrustState:
        return self._material.trust

    def rebuild(self) -> None:
        """New handshakes take the new context; connections already open keep theirs."""
        self._material = load_material(
            self._config,
            self._where,
            generation=self._material.trust.generation + 1,
            alpn=self._alpn,
        )
        log.info("TLS material reloaded for %s", self._where)
