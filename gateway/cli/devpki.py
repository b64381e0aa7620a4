"""Development PKI for ``mtls-gateway certs init`` and ``mtls-gateway quickstart``.

Makes a throw-away CA, a server certificate for the local host names, one
CA-issued client and one self-signed client, so that the README's first command
works without any openssl incantations.  Everything is ECDSA P-256: cheap to
generate and to verify, and accepted by every TLS stack we care about.

Nothing here is meant for production: the CA key sits unencrypted next to the
certificates it signed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.trust.dn import format_name
from gateway.trust.identity import can_sign_certificates, sha1_thumbprint

__all__ = ["DevClient", "DevPki", "DevPkiError", "init_dev_pki"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
SELF_SIGNED_CERT = "self-signed-client.pem"
SELF_SIGNED_KEY = "self-signed-client.key"

# (certificate, key) pairs, in the order problems are reported.
_PAIRS: tuple[tuple[str, str], ...] = (
    (CA_CERT, CA_KEY),
    (SERVER_CERT, SERVER_KEY),
    (CLIENT_CERT, CLIENT_KEY),
    (SELF_SIGNED_CERT, SELF_SIGNED_KEY),
)
_FILES: tuple[str, ...] = tuple(name for pair in _PAIRS for name in pair)

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

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


class DevPkiError(Exception):
    """A user-facing, one-line problem with the dev PKI directory or one of its files."""


@dataclass(frozen=True)
class DevClient:
    cert: Path
    key: Path
    subject: str  # IdentityServer DN form (gateway.trust.dn.format_name)
    thumbprint: str  # SHA-1 of the DER, lowercase hex


@dataclass(frozen=True)
class DevPki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client: DevClient  # CA-issued: CN=client, OU=production, O=company
    self_signed: DevClient  # self-signed: CN=self-signed-client, O=company
    created: bool  # False when every file already existed and was reused


def init_dev_pki(
    directory: Path,
    *,
    reuse: bool = True,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
) -> DevPki:
    """Create (or reuse) the dev PKI in ``directory``.

    With ``reuse`` (the default), a directory holding all eight files is
    checked and returned unchanged; one holding only some of them is an error
    rather than something to overwrite, since those may be an operator's own
    files.  Without ``reuse`` everything is generated afresh.
    """
    directory = Path(directory)
    san = _server_san(directory / SERVER_CERT, hostnames)
    if directory.exists() and not directory.is_dir():
        raise DevPkiError(f"{directory}: exists and is not a directory")
    if reuse:
        present = [name for name in _FILES if os.path.lexists(directory / name)]
        if len(present) == len(_FILES):
            return _load(directory, san)
        if present:
            missing = next(name for name in _FILES if name not in present)
            raise DevPkiError(
                f"{directory / missing}: missing, but {len(present)} of the {len(_FILES)} "
                f"dev PKI files exist in {directory}; restore it or remove the others"
            )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DevPkiError(f"{directory}: cannot create directory: {exc.strerror}") from exc
    _generate(directory, san)
    # Read back what was written: the caller gets exactly what is on disk.
    return dataclasses.replace(_load(directory, san), created=True)


# --- generation -------------------------------------------------------------


def _server_san(path: Path, hostnames: Sequence[str]) -> list[x509.GeneralName]:
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


def _generate(directory: Path, server_san: Sequence[x509.GeneralName]) -> None:
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


# --- loading ------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DevPkiError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise DevPkiError(f"{path}: not a PEM certificate: {exc}") from exc


def _load_key(path: Path, cert_path: Path, cert: x509.Certificate) -> None:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except TypeError as exc:  # encrypted
        raise DevPkiError(f"{path}: private key is encrypted; dev keys must not be") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DevPkiError(f"{path}: not a PEM private key: {exc}") from exc
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise DevPkiError(f"{path}: private key does not match the certificate in {cert_path}")


def _check_issued(path: Path, cert: x509.Certificate, issuer: x509.Certificate, by: Path) -> None:
    # A CA swapped under the leaves would only show up later as an opaque TLS alert.
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise DevPkiError(f"{path}: not issued by the CA in {by}") from exc


def _check_dates(path: Path, cert: x509.Certificate, now: dt.datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise DevPkiError(
            f"{path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "regenerate the dev PKI (remove its directory)"
        )


def _load(directory: Path, server_san: Sequence[x509.GeneralName]) -> DevPki:
    paths = {name: directory / name for name in _FILES}
    certs: dict[str, x509.Certificate] = {}
    for cert_name, key_name in _PAIRS:
        cert = _load_cert(paths[cert_name])
        _load_key(paths[key_name], paths[cert_name], cert)
        certs[cert_name] = cert

    now = dt.datetime.now(dt.UTC)
    for name, cert in certs.items():
        _check_dates(paths[name], cert, now)
    ca = certs[CA_CERT]
    if not can_sign_certificates(ca):
        raise DevPkiError(f"{paths[CA_CERT]}: not a CA certificate")
    for name in (SERVER_CERT, CLIENT_CERT):
        _check_issued(paths[name], certs[name], ca, paths[CA_CERT])
    for name in (CLIENT_CERT, SELF_SIGNED_CERT):
        if can_sign_certificates(certs[name]):
            # A dev client that can sign would teach the wrong habit: such a
            # certificate is never a PKI client (RFC 5280 §4.2.1.9), and by
            # thumbprint only its exact self is admitted (docs/design/tls-layer.md).
            raise DevPkiError(f"{paths[name]}: a client certificate must not be able to sign")

    try:
        san = certs[SERVER_CERT].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        have = set(san.value)
    except x509.ExtensionNotFound:
        have = set()
    lacking = [name for name in server_san if name not in have]
    if lacking:
        shown = ", ".join(str(name.value) for name in lacking)
        raise DevPkiError(f"{paths[SERVER_CERT]}: does not cover {shown}; regenerate the dev PKI")

    return DevPki(
        directory=directory,
        ca_cert=paths[CA_CERT],
        ca_key=paths[CA_KEY],
        server_cert=paths[SERVER_CERT],
        server_key=paths[SERVER_KEY],
        client=_client(paths[CLIENT_CERT], paths[CLIENT_KEY], certs[CLIENT_CERT]),
        self_signed=_client(
            paths[SELF_SIGNED_CERT], paths[SELF_SIGNED_KEY], certs[SELF_SIGNED_CERT]
        ),
        created=False,
    )


def _client(cert_path: Path, key_path: Path, cert: x509.Certificate) -> DevClient:
    return DevClient(
        cert=cert_path,
        key=key_path,
        subject=format_name(cert.subject),
        thumbprint=sha1_thumbprint(cert.public_bytes(serialization.Encoding.DER)),
    )
