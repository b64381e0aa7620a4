"""gateway.trust.identity: certificate → identity, on a table of real certificates.

Hashes are recomputed here with hashlib/base64, and names and SANs are written
out, so the table checks the function rather than restating it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.trust.dn import parse_dn
from gateway.trust.identity import (
    CertificateError,
    identity_from_der,
    normalise_thumbprint,
    sha1_thumbprint,
    x5t_s256,
)
from tests.conftest import MakeGateway, echoed_headers, name_secret, registry_client
from tests.pki import Issued, Pki, dn, name

UTC = dt.UTC
NOT_BEFORE = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
NOT_AFTER = dt.datetime(2099, 6, 7, 8, 9, 10, tzinfo=UTC)
PAST_BEFORE = dt.datetime(2020, 1, 1, tzinfo=UTC)
PAST_AFTER = dt.datetime(2021, 1, 1, tzinfo=UTC)
TEST_CA = "CN=Test Root CA, O=Test"

# RFC 8705 Appendix A, the certificate whose x5t#S256 the RFC gives (also an
# X.509 v1 certificate, as found in the wild).
RFC8705_PEM = b"""-----BEGIN CERTIFICATE-----
MIIBBjCBrAIBAjAKBggqhkjOPQQDAjAPMQ0wCwYDVQQDDARtdGxzMB4XDTE4MTAx
ODEyMzcwOVoXDTIyMDUwMjEyMzcwOVowDzENMAsGA1UEAwwEbXRsczBZMBMGByqG
SM49AgEGCCqGSM49AwEHA0IABNcnyxwqV6hY8QnhxxzFQ03C7HKW9OylMbnQZjjJ
/Au08/coZwxS7LfA4vOLS9WuneIXhbGGWvsDSb0tH6IxLm8wCgYIKoZIzj0EAwID
SQAwRgIhAP0RC1E+vwJD/D1AGHGzuri+hlV/PpQEKTWUVeORWz83AiEA5x2eXZOV
bUlJSGQgjwD5vaUaKlLR50Q2DmFfQj1L+SY=
-----END CERTIFICATE-----
"""
RFC8705_X5T_S256 = "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"


# --------------------------------------------------------------------------- v1 certificates


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at ``at``."""
    tag, length, start = data[at], data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


def _der(tag: int, contents: bytes) -> bytes:
    n = len(contents)
    if n < 0x80:
        return bytes([tag, n]) + contents
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + contents


def v1_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An X.509 v1 certificate: self-signed, or signed by ``issuer`` (name, key).

    cryptography's CertificateBuilder always writes v3, so build one without
    extensions, drop the ``[0] version`` field from its TBSCertificate (absent
    means v1, RFC 5280 §4.1) and sign the result again with the same key.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    issuer_name, signer = issuer or (subject, key)
    v3 = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .sign(signer, hashes.SHA256())
    )
    der = v3.public_bytes(serialization.Encoding.DER)
    _, outer, _ = _tlv(der, 0)
    _, tbs_start, tbs_end = _tlv(der, outer)
    tag, _, version_end = _tlv(der, tbs_start)
    assert tag == 0xA0, "expected the explicit version field first"
    tbs = _der(0x30, der[version_end:tbs_end])
    _, _, alg_end = _tlv(der, tbs_end)
    signature = signer.sign(tbs, ec.ECDSA(hashes.SHA256()))
    cert = x509.load_der_x509_certificate(
        _der(0x30, tbs + der[tbs_end:alg_end] + _der(0x03, b"\x00" + signature))
    )
    assert cert.version is x509.Version.v1
    if issuer is None:
        cert.verify_directly_issued_by(cert)
    return cert, key


def _v1_issued_by_ca(subject: x509.Name) -> Callable[[Pki], bytes]:
    def make(pki: Pki) -> bytes:
        cert, _ = v1_certificate(subject, issuer=(pki.ca.cert.subject, pki.ca.key))
        cert.verify_directly_issued_by(pki.ca.cert)
        return _der_of(cert)

    return make


# nsCertType (2.16.840.1.113730.1.1) as openssl writes it: a DER BIT STRING.
NS_CERT_TYPE = x509.ObjectIdentifier("2.16.840.1.113730.1.1")
NS_CLIENT = bytes.fromhex("03020780")  # client
NS_CLIENT_SSL_CA = bytes.fromhex("03020284")  # client, sslCA


def _ns_cert_type_only(subject: x509.Name, bits: bytes) -> Callable[[Pki], bytes]:
    """CA-issued, no basicConstraints and no keyUsage: only nsCertType says what it is."""

    def make(pki: Pki) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(pki.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_AFTER)
            .add_extension(x509.UnrecognizedExtension(NS_CERT_TYPE, bits), critical=False)
            .sign(pki.ca.key, hashes.SHA256())
        )
        return _der_of(cert)

    return make


# --------------------------------------------------------------------------- the table


def _der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Row:
    id: str
    make: Callable[[Pki], bytes]
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    self_issued: bool
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    x5t_s256: str | None = None  # a known answer, where there is one


def _issue(**kwargs: object) -> Callable[[Pki], bytes]:
    subject = kwargs.pop("subject")
    kwargs.setdefault("not_before", NOT_BEFORE)
    kwargs.setdefault("not_after", NOT_AFTER)

    def make(pki: Pki) -> bytes:
        return pki.certificate(subject, **kwargs).der  # type: ignore[arg-type]

    return make


ROWS = [
    Row(
        "pki-client-with-every-san",
        _issue(
            subject=dn("client"),
            dns=["API.Example.COM.", "client.local"],
            uris=["spiffe://example.org/ns/prod/sa/client"],
            ips=["10.1.2.3", "2001:DB8::1"],
            emails=["Ops@Example.COM"],
        ),
        subject="CN=client, OU=production, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=False,
        self_issued=False,
        dns=("api.example.com", "client.local"),  # lower case, no trailing dot
        uri=("spiffe://example.org/ns/prod/sa/client",),
        ip=("10.1.2.3", "2001:db8::1"),  # compressed lower-case IPv6
        email=("Ops@Example.COM",),  # as written; matching folds the domain
    ),
    Row(
        "multi-valued-unicode-quoted",
        _issue(
            subject=name(
                (NameOID.COUNTRY_NAME, "FR"),
                (NameOID.ORGANIZATION_NAME, "Société, SA"),
                [(NameOID.COMMON_NAME, "Jürgen"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "prod")],
            )
        ),
        # Inside an RDN, the DER SET OF order (shorter encoding first), as .NET
        # shows it: the certificate, not the builder call, fixes that order.
        subject='OU=prod + CN=Jürgen, O="Société, SA", C=FR',
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=False,
        self_issued=False,
    ),
    Row(
        "self-signed-leaf",
        _issue(subject=dn("self", ou=None), self_signed=True, uris=["spiffe://example.org/self"]),
        subject="CN=self, O=company",
        issuer="CN=self, O=company",
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=False,
        self_issued=True,
        uri=("spiffe://example.org/self",),
    ),
    Row(
        "ca-true-issued",
        lambda pki: (
            pki.certificate(
                dn("sub-ca", ou=None),
                issuer=pki.ca,
                ca=True,
                key_cert_sign=False,
                not_before=NOT_BEFORE,
                not_after=NOT_AFTER,
            ).der
        ),
        subject="CN=sub-ca, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=True,
        self_issued=False,
    ),
    Row(
        "key-cert-sign-without-ca-true",
        _issue(subject=dn("signer"), key_cert_sign=True),
        subject="CN=signer, OU=production, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=True,
        self_issued=False,
    ),
    Row(
        "x509-v1-self-signed",
        lambda _: _der_of(v1_certificate(dn("legacy"))[0]),
        subject="CN=legacy, OU=production, O=company",
        issuer="CN=legacy, OU=production, O=company",
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=True,  # OpenSSL treats a v1 trust anchor as a CA
        self_issued=True,
    ),
    Row(
        # `openssl x509 -req -CA ca.pem` without -extfile: OpenSSL can't chain
        # through a v1 certificate that is not self-issued, so it is a leaf.
        "x509-v1-ca-issued",
        _v1_issued_by_ca(dn("tutorial")),
        subject="CN=tutorial, OU=production, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=False,
        self_issued=False,
    ),
    Row(
        # Self-issued but signed by the CA: OpenSSL's V1_ROOT test is on names.
        "x509-v1-self-issued-ca-signed",
        _v1_issued_by_ca(
            name((NameOID.ORGANIZATION_NAME, "Test"), (NameOID.COMMON_NAME, "test root ca"))
        ),
        subject="CN=test root ca, O=Test",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=True,
        self_issued=False,  # not byte-equal names; the CA test folds case
    ),
    Row(
        "ns-cert-type-ssl-ca-without-basic-constraints",
        _ns_cert_type_only(dn("netscape"), NS_CLIENT_SSL_CA),
        subject="CN=netscape, OU=production, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=True,  # OpenSSL's check_ca takes it as an issuer (non-strict mode)
        self_issued=False,
    ),
    Row(
        "ns-cert-type-client-only",
        _ns_cert_type_only(dn("netscape-client"), NS_CLIENT),
        subject="CN=netscape-client, OU=production, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=False,
        self_issued=False,
    ),
    Row(
        "ns-cert-type-malformed",  # not a BIT STRING: fail closed
        _ns_cert_type_only(dn("netscape-odd"), bytes.fromhex("0400")),
        subject="CN=netscape-odd, OU=production, O=company",
        issuer=TEST_CA,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        is_ca=True,
        self_issued=False,
    ),
    Row(
        "rfc8705-appendix-a",
        lambda _: _der_of(x509.load_pem_x509_certificate(RFC8705_PEM)),
        subject="CN=mtls",
        issuer="CN=mtls",
        not_before=dt.datetime(2018, 10, 18, 12, 37, 9, tzinfo=UTC),
        not_after=dt.datetime(2022, 5, 2, 12, 37, 9, tzinfo=UTC),
        is_ca=True,
        self_issued=True,
        x5t_s256=RFC8705_X5T_S256,
    ),
    Row(
        "expired-no-sans",
        _issue(subject=dn("old"), not_before=PAST_BEFORE, not_after=PAST_AFTER),
        subject="CN=old, OU=production, O=company",
        issuer=TEST_CA,
        not_before=PAST_BEFORE,
        not_after=PAST_AFTER,
        is_ca=False,
        self_issued=False,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_identity_from_der(pki: Pki, row: Row) -> None:
    der = row.make(pki)
    identity = identity_from_der(der)

    assert identity.der == der
    assert identity.subject == row.subject
    assert identity.issuer == row.issuer
    # The string and the key describe the same name.
    assert identity.subject_key == parse_dn(row.subject).key
    assert identity.issuer_key == parse_dn(row.issuer).key
    assert (identity.sans.dns, identity.sans.uri) == (row.dns, row.uri)
    assert (identity.sans.ip, identity.sans.email) == (row.ip, row.email)

    assert identity.thumbprint == hashlib.sha1(der, usedforsecurity=False).hexdigest()
    assert len(identity.thumbprint) == 40
    assert identity.sha256_hex == hashlib.sha256(der).hexdigest()
    expected_x5t = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert identity.x5t_s256 == expected_x5t
    assert len(identity.x5t_s256) == 43 and "=" not in identity.x5t_s256
    if row.x5t_s256 is not None:
        assert identity.x5t_s256 == row.x5t_s256

    cert = x509.load_der_x509_certificate(der)
    assert identity.serial_number == cert.serial_number
    assert identity.subject_rfc4514 == cert.subject.rfc4514_string()
    assert (identity.not_before, identity.not_after) == (row.not_before, row.not_after)
    assert identity.is_ca is row.is_ca
    assert identity.self_issued is row.self_issued


def test_valid_at_bounds_are_inclusive(pki: Pki) -> None:
    identity = identity_from_der(_issue(subject=dn("window"))(pki))
    second = dt.timedelta(seconds=1)
    assert not identity.valid_at(NOT_BEFORE - second)
    assert identity.valid_at(NOT_BEFORE)
    assert identity.valid_at(NOT_AFTER)
    assert not identity.valid_at(NOT_AFTER + second)


def test_hash_helpers_match_the_identity(pki: Pki) -> None:
    der = _issue(subject=dn("hashes"))(pki)
    identity = identity_from_der(der)
    assert sha1_thumbprint(der) == identity.thumbprint
    assert x5t_s256(der) == identity.x5t_s256


@pytest.mark.parametrize(
    ("pasted", "expected"),
    [
        ("BCA0D040847F843C5EE0FA6EB494837470155868", "bca0d040847f843c5ee0fa6eb494837470155868"),
        (
            "bc:a0:d0:40:84:7f:84:3c:5e:e0:fa:6e:b4:94:83:74:70:15:58:68",
            "bca0d040847f843c5ee0fa6eb494837470155868",
        ),
        (
            "bc a0 d0 40 84 7f 84 3c 5e e0 fa 6e b4 94 83 74 70 15 58 68",
            "bca0d040847f843c5ee0fa6eb494837470155868",
        ),
        ("\tBCA0d040847f843c5ee0fa6eb494837470155868 ", "bca0d040847f843c5ee0fa6eb494837470155868"),
        (
            "BC\u00a0A0\u00a0D0\u00a040847f843c5ee0fa6eb494837470155868\r\n",
            "bca0d040847f843c5ee0fa6eb494837470155868",
        ),
    ],
)
def test_normalise_thumbprint(pasted: str, expected: str) -> None:
    assert normalise_thumbprint(pasted) == expected


def _garbage(pki: Pki) -> list[bytes]:
    der = _issue(subject=dn("garbage"))(pki)
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return [
        b"",
        b"not a certificate",
        bytes(range(256)),
        pem,  # PEM is not DER
        der[:-20],  # truncated
        der[:4] + b"\x00" * (len(der) - 4),
    ]


def test_garbage_raises_certificate_error(pki: Pki) -> None:
    for blob in _garbage(pki):
        with pytest.raises(CertificateError):
            identity_from_der(blob)


# --------------------------------------------------------------------------- over real TLS


@pytest.fixture
def tutorial_v1_leaf(pki: Pki, tmp_path: Path) -> Issued:
    """A client certificate made the way tutorials print it, with the openssl CLI:
    ``openssl req -new`` then ``openssl x509 -req -CA ca.pem`` without -extfile."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command line tool is not installed")
    key, csr, cert = tmp_path / "v1.key", tmp_path / "v1.csr", tmp_path / "v1.pem"

    def run(*args: str | Path) -> None:
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)

    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    run("req", "-new", "-key", key, "-subj", "/O=company/OU=production/CN=v1client", "-out", csr)
    run(
        "x509", "-req", "-in", csr, "-CA", pki.ca.cert_path, "-CAkey", pki.ca.key_path,
        "-CAcreateserial", "-days", "30", "-sha256", "-out", cert,
    )  # fmt: skip
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    if leaf.version is not x509.Version.v1:
        # OpenSSL 3.2+ adds key identifiers to `x509 -req` by default (v3).
        pytest.skip(f"this openssl writes X.509 {leaf.version.name} for x509 -req")
    private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    return Issued(leaf, private_key, cert, key)


async def test_v1_ca_issued_leaf_is_matched_by_dn_over_tls(
    make_gateway: MakeGateway, tutorial_v1_leaf: Issued
) -> None:
    """Issue 13: such a leaf got 403 "can issue certificates"; it cannot, so it is a client."""
    dn_text = "CN=v1client, OU=production, O=company"
    gw = await make_gateway(clients=[registry_client("v1.client", name_secret(dn_text))])
    async with gw.session(tutorial_v1_leaf) as session, session.get(gw.url + "/v1") as r:
        body = await r.json()
    assert r.status == 200, body
    seen = echoed_headers(body)
    assert seen["x-client-id"] == ["v1.client"]
    assert seen["x-client-cert-thumbprint"] == [tutorial_v1_leaf.thumbprint]
