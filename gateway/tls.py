"""TLS listeners: server contexts, trust material, and swapping both without restart.

The stdlib ``ssl`` module has no verify callback (TLS-NOTES), which shapes this:

* Trust anchors are ``client_ca`` plus each pinned self-issued client
  certificate (X509CertificateThumbprint secrets need their certificate in the
  trust store to pass the handshake).  A pin that could issue certificates
  (CA:TRUE, keyCertSign, or X.509 v1) would let its key mint more accepted
  certificates, so it is refused at load.
* ``sni_callback`` runs on every handshake, with or without SNI; it points the
  connection at the current context, so a reload only has to build a new
  context and swap one reference.  ``verify_mode`` and ``verify_flags`` stay
  those of the listening context: they are fixed at start.
* A resumed session skips the current trust store, so resumed connections are
  re-checked against the current material in Python (``TrustState.accepts``).
* SPIFFE bundles (``spiffe_bundles``) join the handshake's trust store; which
  pool vouches for a certificate is decided per registry secret in Python
  (gateway/chain.py, ``TrustState.chain_facts``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from gateway.chain import CertificateTrust, TrustPool
from gateway.config import TlsConfig
from gateway.dn import format_name, name_key
from gateway.identity import CertificateIdentity, can_sign_certificates, sha1_thumbprint
from gateway.watch import ChangeDetector

log = logging.getLogger("gateway.tls")

# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla "intermediate").
# TLS 1.3 suites are all fine and are not affected by set_ciphers.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class TlsMaterialError(Exception):
    """Certificates or keys that cannot be used; ``problems`` name file and fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_pem_certificates(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    # cryptography's parse errors are Rust debug text (ParseError { kind: ... }):
    # say what the file should have been instead.
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ValueError(
            "not PEM certificates (BEGIN CERTIFICATE) nor one DER certificate"
        ) from None


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
    pinned_thumbprints: frozenset[str]
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

    def is_pinned(self, identity: CertificateIdentity) -> bool:
        return identity.thumbprint in self.pinned_thumbprints

    def accepts(self, identity: CertificateIdentity) -> bool:
        """Would the current trust store accept this leaf as directly trusted or issued?

        Used only for resumed sessions, where OpenSSL did not verify against the
        current store.  Intermediates must then be in ``client_ca``.
        """
        # Validity first: OpenSSL checks the dates of a pinned (trust anchor)
        # leaf too, so an expired pin fails a full handshake and must not be
        # let in by resuming a session made while it was valid.
        if not identity.valid_at(dt.datetime.now(dt.UTC)):
            return False
        if identity.thumbprint in self.pinned_thumbprints:
            return True
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
    context: ssl.SSLContext
    trust: TrustState
    server_not_after: dt.datetime


def _base_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_certs == "required" else ssl.CERT_OPTIONAL
    # Partial chains let an operator trust an intermediate, or pin a CA-issued
    # leaf, without trusting the whole root (RFC 8705 §2.2 pins).
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.set_alpn_protocols(["http/1.1"])
    # TLS 1.3 sends 2 session tickets by default; a client resumes with one,
    # and each costs the server a session serialisation (bench/RESULTS.md:
    # ~12 % of a full handshake's CPU).  One keeps resumption working.
    ctx.num_tickets = 1
    return ctx


def load_material(tls: TlsConfig, where: str, generation: int = 1) -> TlsMaterial:
    """Build a server context from files; every problem is reported at once."""
    problems: list[str] = []
    ctx = _base_context(tls)
    server_not_after = dt.datetime.now(dt.UTC)
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
        server_not_after = load_pem_certificates(tls.cert)[0].not_valid_after_utc
    except (OSError, ssl.SSLError, ValueError) as exc:
        problems.append(
            f"{where}.cert: cannot use {tls.cert} with key {tls.key}: {_ssl_reason(exc)}"
        )

    ca_certs: list[x509.Certificate] = []
    pinned: dict[str, x509.Certificate] = {}
    if tls.client_ca is not None:
        try:
            for cert in load_pem_certificates(tls.client_ca):
                if can_sign_certificates(cert):
                    ca_certs.append(cert)
                else:
                    # A leaf in the CA bundle is trusted as itself (partial chain):
                    # treat it as a pin so it can only match thumbprint secrets.
                    pinned[sha1_thumbprint(cert.public_bytes(serialization.Encoding.DER))] = cert
            if not ca_certs and not pinned:
                problems.append(f"{where}.client_ca: no certificates in {tls.client_ca}")
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.client_ca: cannot read {tls.client_ca}: {exc}")
    for i, path in enumerate(tls.pinned_certs):
        try:
            certs = load_pem_certificates(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.pinned_certs[{i}]: cannot read {path}: {exc}")
            continue
        for cert in certs:
            if can_sign_certificates(cert):
                problems.append(
                    f"{where}.pinned_certs[{i}]: {path}: refusing to pin "
                    f"'{format_name(cert.subject)}': it can issue certificates "
                    "(CA:TRUE, keyCertSign or X.509 v1); pin a leaf or put the CA in client_ca"
                )
                continue
            pinned[sha1_thumbprint(cert.public_bytes(serialization.Encoding.DER))] = cert

    crls: list[x509.CertificateRevocationList] = []
    if tls.crl is not None:
        try:
            crls = load_crls(tls.crl)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}.crl: cannot read {tls.crl}: {exc}")
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
            problems.append(f"{where}.spiffe_bundles.{domain}: cannot read {path}: {exc}")
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

    anchors = [*ca_certs, *pinned.values(), *(c for certs in bundles.values() for c in certs)]
    if anchors:
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in anchors)
        try:
            ctx.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            problems.append(f"{where}.client_ca: trust store rejected: {_ssl_reason(exc)}")
    if problems:
        raise TlsMaterialError(problems)
    return TlsMaterial(
        context=ctx,
        trust=TrustState(
            tuple(ca_certs),
            frozenset(pinned),
            generation,
            tuple(crls),
            client_ca_pool=TrustPool.of("client_ca", ca_certs),
            bundle_pools={
                domain: TrustPool.of(f"spiffe_bundles.{domain}", certs)
                for domain, certs in bundles.items()
            },
        ),
        server_not_after=server_not_after,
    )


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


class ListenerTls:
    """The listening context of one listener, and the material it swaps in."""

    def __init__(self, tls: TlsConfig, where: str) -> None:
        self._config = tls
        self._where = where
        self._material = load_material(tls, where)
        self._changes = ChangeDetector(self.watched_files())
        self.reload_failures = 0
        self.reloads_ok = 0
        self.handshakes_started = 0
        self.listening_context = _base_context(tls)
        self.listening_context.load_cert_chain(tls.cert, tls.key)
        self.listening_context.sni_callback = self._select_context

    def watched_files(self) -> Iterable[Path | None]:
        return (
            self._config.cert,
            self._config.key,
            self._config.client_ca,
            self._config.crl,
            *self._config.pinned_certs,
            *(path for _, path in self._config.spiffe_bundles),
        )

    @property
    def material(self) -> TlsMaterial:
        return self._material

    @property
    def trust(self) -> TrustState:
        return self._material.trust

    def _select_context(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        self.handshakes_started += 1  # /metrics: started - completed = failed or in progress
        ssl_object.context = self._material.context

    def reload(self) -> bool:
        """Rebuild from files; on failure keep serving the old material."""
        try:
            material = load_material(
                self._config, self._where, generation=self._material.trust.generation + 1
            )
        except TlsMaterialError as exc:
            self.reload_failures += 1
            log.error("TLS reload failed for %s, keeping current material: %s", self._where, exc)
            return False
        self._material = material
        self.reloads_ok += 1
        log.info("TLS material reloaded for %s", self._where)
        return True

    def reload_if_changed(self) -> bool:
        return self._changes.changed() and self.reload()
