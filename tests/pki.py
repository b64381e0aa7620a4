"""Test PKI: real certificates made with `cryptography`, written to a temp dir.

Every shape the tests need (multi-valued and unicode RDNs, expired, wrong CA,
CA:TRUE leaves, SANs) is made here, so no test depends on checked-in keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from gateway.listener.tls_context import ALPN_PROTOCOLS, build_server_context
from gateway.trust.identity import sha1_thumbprint

NOW = dt.datetime.now(dt.UTC)
_counter = itertools.count()


def name(
    *rdns: tuple[x509.ObjectIdentifier, str] | list[tuple[x509.ObjectIdentifier, str]],
) -> x509.Name:
    """Build a Name in ASN.1 order (least specific first); a list is a multi-valued RDN."""
    result = []
    for rdn in rdns:
        attrs = rdn if isinstance(rdn, list) else [rdn]
        result.append(x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in attrs]))
    return x509.Name(result)


def dn(cn: str, ou: str | None = "production", o: str | None = "company") -> x509.Name:
    parts: list[tuple[x509.ObjectIdentifier, str]] = []
    if o is not None:
        parts.append((NameOID.ORGANIZATION_NAME, o))
    if ou is not None:
        parts.append((NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    parts.append((NameOID.COMMON_NAME, cn))
    return name(*parts)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def thumbprint(self) -> str:
        return sha1_thumbprint(self.der)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A CA plus helpers to issue leaves; files land in ``directory``."""

    def __init__(self, directory: Path, ca_name: str = "Test Root CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = self.certificate(
            name((NameOID.ORGANIZATION_NAME, "Test"), (NameOID.COMMON_NAME, ca_name)),
            ca=True,
            label=ca_name.replace(" ", "-").lower(),
        )
        self.server = self.certificate(
            name((NameOID.COMMON_NAME, "localhost")),
            dns=["localhost"],
            ips=["127.0.0.1", "::1"],
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
            label="server",
        )

    def certificate(
        self,
        subject: x509.Name,
        *,
        issuer: Issued | None = None,
        self_signed: bool = False,
        ca: bool = False,
        key_cert_sign: bool | None = None,
        dns: Sequence[str] = (),
        uris: Sequence[str] = (),
        ips: Sequence[str] = (),
        emails: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
        label: str | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        signer_is_self = (ca and issuer is None) or self_signed
        signer_key = key if signer_is_self else (issuer or self.ca).key
        issuer_name = subject if signer_is_self else (issuer or self.ca).cert.subject
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(hours=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca if key_cert_sign is None else key_cert_sign,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if not signer_is_self:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
                critical=False,
            )
        if eku is not None and not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.RFC822Name(e) for e in emails]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(signer_key, hashes.SHA256())
        stem = label or f"cert-{next(_counter)}"
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}.key"
        chain = cert.public_bytes(serialization.Encoding.PEM)
        cert_path.write_bytes(chain)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return Issued(cert, key, cert_path, key_path)

    def client(self, cn: str = "client", **kwargs: object) -> Issued:
        return self.certificate(dn(cn), **kwargs)  # type: ignore[arg-type]

    def client_context(
        self, client: Issued | None, *, trust: Issued | None = None
    ) -> ssl.SSLContext:
        """A client-side context trusting our server, presenting ``client`` if given."""
        ctx = ssl.create_default_context(cafile=str((trust or self.ca).cert_path))
        if client is not None:
            ctx.load_cert_chain(client.cert_path, client.key_path)
        return ctx

    def listener_context(
        self,
        *,
        client_certs: Literal["optional", "required"] = "optional",
        alpn: Sequence[bytes] = ALPN_PROTOCOLS,
    ) -> SSL.Context:
        """A listener's server context (the production builder) for our server certificate."""
        return build_server_context(
            cert=self.server.cert_path,
            key=self.server.key_path,
            anchors=[self.ca.cert],
            client_certs=client_certs,
            min_version="1.2",
            alpn=alpn,
        )
