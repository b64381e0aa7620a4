"""Development PKI for ``mtls-gateway certs init`` and ``mtls-gateway quickstart``.

Makes a throw-away CA, a server certificate for the local host names, one
CA-issued client and one self-signed client, so that the README's first command
works without any openssl incantations.  This module reuses a directory that
already holds the set, after checking it; issuing a fresh one is
gateway/cli/devpki_issue.py.

Nothing here is meant for production: the CA key sits unencrypted next to the
certificates it signed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.cli.devpki_issue import (
    CA_CERT,
    CA_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
    SELF_SIGNED_CERT,
    SELF_SIGNED_KEY,
    SERVER_CERT,
    SERVER_KEY,
    DevPkiError,
    generate,
    server_san,
)
from gateway.trust.dn import format_name
from gateway.trust.identity import can_sign_certificates, sha1_thumbprint

__all__ = ["DevClient", "DevPki", "init_dev_pki"]

# (certificate, key) pairs, in the order problems are reported.
_PAIRS: tuple[tuple[str, str], ...] = (
    (CA_CERT, CA_KEY),
    (SERVER_CERT, SERVER_KEY),
    (CLIENT_CERT, CLIENT_KEY),
    (SELF_SIGNED_CERT, SELF_SIGNED_KEY),
)
_FILES: tuple[str, ...] = tuple(name for pair in _PAIRS for name in pair)

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


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
    san = server_san(directory / SERVER_CERT, hostnames)
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
    generate(directory, san)
    # Read back what was written: the caller gets exactly what is on disk.
    return dataclasses.replace(_load(directory, san), created=True)


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
