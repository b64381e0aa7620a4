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

from gateway.trust.dn import DnKey, format_name, name_key


class CertificateError(ValueError):
    """The bytes are not a usable X.509 certificate."""


def sha1_thumbprint(der: bytes) -> str:
    """IdentityServer's thumbprint: SHA-1 of the DER, lowercase hex (40 chars)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def x5t_s256(der: bytes) -> str:
    """RFC 8705 §3.1 ``x5t#S256``: base64url (no padding) SHA-256 of the DER."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def normalise_thumbprint(value: str) -> str:
    """Thumbprints as operators paste them: any case, with colons or white space
    (any Unicode space, e.g. the no-break space some tools copy)."""
    return "".join(ch for ch in value if ch != ":" and not ch.isspace()).lower()


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
    is_ca: bool  # can_sign_certificates: never a PKI client (RFC 5280 §4.2.1.9)
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


# Netscape certificate type (nsCertType): a BIT STRING; the SSL CA, S/MIME CA
# and object-signing CA bits are the last three of the first octet.
_NS_CERT_TYPE = x509.ObjectIdentifier("2.16.840.1.113730.1.1")
_NS_ANY_CA = 0x07


def _ns_cert_type_ca(cert: x509.Certificate) -> bool:
    try:
        ext = cert.extensions.get_extension_for_oid(_NS_CERT_TYPE).value
    except x509.ExtensionNotFound:
        return False
    if not isinstance(ext, x509.UnrecognizedExtension):
        return True  # parsed by a newer cryptography: we can't tell, so assume it can
    der = ext.value  # BIT STRING: 03 <length> <unused bits> <octets>
    if len(der) < 3 or der[0] != 0x03 or der[1] != len(der) - 2:
        return True  # malformed: OpenSSL's reading is unknown, so fail closed
    return len(der) > 3 and bool(der[3] & _NS_ANY_CA)


def can_sign_certificates(cert: x509.Certificate) -> bool:
    """True for a certificate that could act as an issuer, for RFC 5280 or OpenSSL.

    RFC 5280 §4.2.1.9: basicConstraints CA:TRUE, or keyUsage keyCertSign (even
    with CA:FALSE, which the RFC forbids).  OpenSSL's chain building (check_ca
    in x509v3/v3_purp.c) also takes, when there is no basicConstraints, a
    self-signed X.509 v1 certificate (a "V1 root") and an nsCertType with a CA
    bit.  A v1 certificate that is *not* self-issued is none of these: it can
    only be a leaf, which is what ``openssl x509 -req -CA ca.pem`` without
    ``-extfile`` writes.  Self-issued is judged by our DN comparison key, which
    folds at least as much as OpenSSL's X509_NAME_cmp, so we never call
    something a leaf that OpenSSL would take as a V1 root.
    """
    try:
        bc: x509.BasicConstraints | None = cert.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound:
        bc = None
    try:
        ku: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if bc is not None and bc.ca:
        return True
    if ku is not None and ku.key_cert_sign:
        return True
    if bc is not None or ku is not None:
        # basicConstraints CA:FALSE, or a keyUsage without keyCertSign: OpenSSL
        # refuses it as an issuer whatever else it says.
        return False
    if cert.version is x509.Version.v1:
        return name_key(cert.subject) == name_key(cert.issuer)
    return _ns_cert_type_ca(cert)


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
