"""Certificate → identity: everything the gateway needs to know about a leaf.

A pure function of the DER bytes, computed once per TLS connection (the leaf is
the same for every request on it) and then matched against the registry.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from gateway.dn import DnKey, format_name, name_key


class CertificateError(ValueError):
    """The bytes are not a usable X.509 certificate."""


def sha1_thumbprint(der: bytes) -> str:
    """IdentityServer's thumbprint: SHA-1 of the DER, lowercase hex (40 chars)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def x5t_s256(der: bytes) -> str:
    """RFC 8705 §3.1 ``x5t#S256``: base64url (no padding) SHA-256 of the DER."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def normalise_thumbprint(value: str) -> str:
    """Thumbprints as operators paste them: any case, with colons or spaces."""
    return "".join(ch for ch in value if ch not in ": \t").lower()


@dataclass(frozen=True, slots=True)
class SubjectAltNames:
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    email: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """What a client certificate says about its holder."""

    der: bytes
    subject: str  # IdentityServer string form
    subject_rfc4514: str  # RFC 4514 form, for Envoy-style XFCC
    subject_key: DnKey
    issuer: str
    issuer_key: DnKey
    sans: SubjectAltNames
    thumbprint: str  # SHA-1 hex, lowercase
    sha256_hex: str
    x5t_s256: str
    serial_number: int
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool  # basicConstraints CA:TRUE or keyCertSign: never a client identity
    self_issued: bool  # subject == issuer

    def valid_at(self, when: dt.datetime) -> bool:
        return self.not_before <= when <= self.not_after


def _sans(cert: x509.Certificate) -> SubjectAltNames:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    san = ext.value
    assert isinstance(san, x509.SubjectAlternativeName)
    return SubjectAltNames(
        dns=tuple(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)),
        uri=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        ip=tuple(
            str(addr)
            for addr in san.get_values_for_type(x509.IPAddress)
            if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ),
        email=tuple(san.get_values_for_type(x509.RFC822Name)),
    )


def can_sign_certificates(cert: x509.Certificate) -> bool:
    """True for a certificate OpenSSL could treat as an issuer.

    basicConstraints CA:TRUE or keyUsage keyCertSign; also an X.509 v1
    certificate, which OpenSSL accepts as a CA when it is a trust anchor.
    """
    if cert.version is x509.Version.v1:
        return True
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if ku.key_cert_sign:
            return True
    except x509.ExtensionNotFound:
        pass
    return False


def identity_from_der(der: bytes) -> CertificateIdentity:
    """Parse a leaf certificate.  Raises CertificateError for anything unusable."""
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject
        issuer = cert.issuer
        sans = _sans(cert)
        is_ca = can_sign_certificates(cert)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"unparseable certificate: {exc}") from exc
    sha256 = hashlib.sha256(der).digest()
    return CertificateIdentity(
        der=der,
        subject=format_name(subject),
        subject_rfc4514=subject.rfc4514_string(),
        subject_key=name_key(subject),
        issuer=format_name(issuer),
        issuer_key=name_key(issuer),
        sans=sans,
        thumbprint=sha1_thumbprint(der),
        sha256_hex=sha256.hex(),
        x5t_s256=base64.urlsafe_b64encode(sha256).rstrip(b"=").decode("ascii"),
        serial_number=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        self_issued=subject == issuer,
    )


@functools.lru_cache(maxsize=1024)
def cached_identity_from_der(der: bytes) -> CertificateIdentity:
    """``identity_from_der`` for returning clients: each new TLS connection of a
    known client skips the X.509 parse, DN formatting and hashing.  Safe to
    share: the identity is a pure, immutable function of the bytes."""
    return identity_from_der(der)
