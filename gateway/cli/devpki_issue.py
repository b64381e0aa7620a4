"""Issuing the dev PKI: its files, the certificates in them, written atomically.

``gateway.cli.devpki`` decides whether to issue or to reuse, and checks what it
reuses; this module generates a fresh set (``generate``) and writes it so that
a failure half way never leaves a truncated PEM file.  ``DevPkiError``, the one
user-facing error of both, lives here because this is the lower of the two.

Everything is ECDSA P-256: cheap to generate and to verify, and accepted by
every TLS stack we care about.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
SELF_SIGNED_CERT = "self-signed-client.pem"
SELF_SIGNED_KEY = "self-signed-client.key"


class DevPkiError(Exception):
    """A user-facing, one-line problem with the dev PKI directory or one of its files."""


CA_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mtls-gateway"),
        x509.NameAttribute(NameOID.COMMON_NAME, "mtls-gateway dev CA"),
    ]
)
# ASN.1 order is least specific first; format_name reverses it into the
# IdentityServer form "CN=client, OU=production, O=company" that registries hold.
CLIENT_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "company"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "production"),
        x509.NameAttribute(NameOID.COMMON_NAME, "client"),
    ]
)
SELF_SIGNED_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "company"),
        x509.NameAttribute(NameOID.COMMON_NAME, "self-signed-client"),
    ]
)
CLIENT_URI = "spiffe://mtls-gateway.local/client"
CLIENT_DNS = "client.local"
SELF_SIGNED_URI = "spiffe://mtls-gateway.local/self-signed-client"

CA_LIFETIME = dt.timedelta(days=3650)
# 825 days: the longest leaf lifetime Apple platforms accept for TLS certificates.
LEAF_LIFETIME = dt.timedelta(days=825)
# Tolerates clocks of containers or VMs that lag the host a little.
CLOCK_SKEW = dt.timedelta(minutes=5)


def server_san(path: Path, hostnames: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hostnames, str):
        # A bare string is a Sequence[str] too; iterating it would give one SAN per letter.
        hostnames = (hostnames,)
    names: list[x509.GeneralName] = []
    for host in hostnames:
        host = host.strip()
        if not host:
            raise DevPkiError(f"{path}: empty host name")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            try:
                names.append(x509.DNSName(host.lower().rstrip(".")))
            except (ValueError, TypeError) as exc:
                raise DevPkiError(f"{path}: invalid host name {host!r}: {exc}") from exc
    if not names:
        raise DevPkiError(f"{path}: at least one host name is needed")
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _leaf_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer_ski: x509.SubjectKeyIdentifier,
    eku: x509.ObjectIdentifier,
    san: Sequence[x509.GeneralName],
    now: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # digitalSignature alone: enough for ECDHE-ECDSA and TLS 1.3
            # CertificateVerify, and never usable to issue certificates.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )


def generate(directory: Path, server_san: Sequence[x509.GeneralName]) -> None:
    now = dt.datetime.now(dt.UTC)

    ca_key = _new_key()
    ca_ski = _ski(ca_key)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(CA_NAME)
        .issuer_name(CA_NAME)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _new_key()
    dns = [name.value for name in server_san if isinstance(name, x509.DNSName)]
    server_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "localhost")]
    )
    server_cert = _leaf_builder(
        server_name,
        CA_NAME,
        server_key,
        ca_ski,
        ExtendedKeyUsageOID.SERVER_AUTH,
        server_san,
        now,
    ).sign(ca_key, hashes.SHA256())

    client_key = _new_key()
    client_cert = _leaf_builder(
        CLIENT_NAME,
        CA_NAME,
        client_key,
        ca_ski,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [x509.UniformResourceIdentifier(CLIENT_URI), x509.DNSName(CLIENT_DNS)],
        now,
    ).sign(ca_key, hashes.SHA256())

    # Self-issued, so its AKI is its own SKI; the digitalSignature-only key
    # usage from _leaf_builder is what keeps the gateway willing to pin it.
    self_key = _new_key()
    self_cert = _leaf_builder(
        SELF_SIGNED_NAME,
        SELF_SIGNED_NAME,
        self_key,
        _ski(self_key),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [x509.UniformResourceIdentifier(SELF_SIGNED_URI)],
        now,
    ).sign(self_key, hashes.SHA256())

    files: list[tuple[str, bytes, int]] = []
    for (cert_name, key_name), cert, key in (
        ((CA_CERT, CA_KEY), ca_cert, ca_key),
        ((SERVER_CERT, SERVER_KEY), server_cert, server_key),
        ((CLIENT_CERT, CLIENT_KEY), client_cert, client_key),
        ((SELF_SIGNED_CERT, SELF_SIGNED_KEY), self_cert, self_key),
    ):
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        files.append((key_name, key_pem, 0o600))
        files.append((cert_name, cert.public_bytes(serialization.Encoding.PEM), 0o644))
    _write_all(directory, files)


def _write_all(directory: Path, files: Sequence[tuple[str, bytes, int]]) -> None:
    """Write every file to a temporary name first, then rename them all.

    A failure half way (disk full, permissions) then leaves either the old set
    or a set that reuse reports as incomplete, never a truncated PEM file.
    Temporary files are created with their final mode, so a private key is
    never readable by others, not even for a moment, and a key file that
    already existed with a looser mode is replaced rather than rewritten.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data, mode in files:
            final = directory / name
            tmp = _create_exclusive(directory, name, mode)
            staged.append((tmp, final))
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        where = exc.filename if exc.filename else directory
        raise DevPkiError(f"{where}: cannot write: {exc.strerror or exc}") from exc


def _create_exclusive(directory: Path, name: str, mode: int) -> Path:
    # O_EXCL under a random name: the file is ours, created with `mode`, and
    # not a pre-planted symlink.
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name for {directory / name}")
