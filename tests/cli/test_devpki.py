"""The dev PKI: files, names, and that real TLS stacks accept what it makes."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from gateway.cli.devpki import DevPki, init_dev_pki
from gateway.cli.devpki_issue import DevPkiError
from gateway.trust.identity import can_sign_certificates

FILES = (
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
    "self-signed-client.pem",
    "self-signed-client.key",
)
KEYS = tuple(name for name in FILES if name.endswith(".key"))


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    # Two levels below tmp_path: parents must be created too.
    return init_dev_pki(tmp_path / "demo" / "pki")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


# --- files ------------------------------------------------------------------


def test_creates_all_files_with_private_modes(pki: DevPki) -> None:
    assert pki.created is True
    assert sorted(p.name for p in pki.directory.iterdir()) == sorted(FILES)
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    for name in KEYS:
        assert stat.S_IMODE((pki.directory / name).stat().st_mode) == 0o600, name
    assert pki.ca_cert == pki.directory / "ca.pem"
    assert pki.ca_key == pki.directory / "ca.key"
    assert pki.server_cert == pki.directory / "server.pem"
    assert pki.server_key == pki.directory / "server.key"
    assert pki.client.cert == pki.directory / "client.pem"
    assert pki.client.key == pki.directory / "client.key"
    assert pki.self_signed.cert == pki.directory / "self-signed-client.pem"
    assert pki.self_signed.key == pki.directory / "self-signed-client.key"


def test_keys_are_unencrypted_pkcs8_p256(pki: DevPki) -> None:
    for name in KEYS:
        pem = (pki.directory / name).read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----"), name
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)


def test_server_pem_holds_only_the_leaf(pki: DevPki) -> None:
    pem = pki.server_cert.read_bytes()
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 1
    cert = _cert(pki.server_cert)
    assert cert.subject.rfc4514_string() == "CN=localhost"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_certificate_profiles(pki: DevPki) -> None:
    ca = _cert(pki.ca_cert)
    assert ca.subject.rfc4514_string() == "CN=mtls-gateway dev CA,O=mtls-gateway"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (bc.ca, bc.path_length) == (True, 0)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3649)

    now = dt.datetime.now(dt.UTC)
    for path in (pki.server_cert, pki.client.cert, pki.self_signed.cert):
        cert = _cert(path)
        assert cert.version is x509.Version.v3
        assert cert.not_valid_before_utc <= now - dt.timedelta(minutes=4), path
        lifetime = cert.not_valid_after_utc - now
        assert dt.timedelta(days=824) < lifetime <= dt.timedelta(days=825), path
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign, path
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    client = _cert(pki.client.cert)
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mtls-gateway.local/client"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["client.local"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_serial_numbers_are_random(tmp_path: Path) -> None:
    a = init_dev_pki(tmp_path / "a")
    b = init_dev_pki(tmp_path / "b")
    serials = {
        _cert(path).serial_number
        for p in (a, b)
        for path in (p.ca_cert, p.server_cert, p.client.cert, p.self_signed.cert)
    }
    assert len(serials) == 8


# --- identities ---------------------------------------------------------------


def test_client_subjects_in_identityserver_form(pki: DevPki) -> None:
    assert pki.client.subject == "CN=client, OU=production, O=company"
    assert pki.self_signed.subject == "CN=self-signed-client, O=company"


def test_thumbprints_are_sha1_of_der(pki: DevPki) -> None:
    for client in (pki.client, pki.self_signed):
        der = _cert(client.cert).public_bytes(serialization.Encoding.DER)
        assert client.thumbprint == hashlib.sha1(der, usedforsecurity=False).hexdigest()
        assert len(client.thumbprint) == 40


def test_only_the_ca_can_sign_certificates(pki: DevPki) -> None:
    assert can_sign_certificates(_cert(pki.ca_cert)) is True
    assert can_sign_certificates(_cert(pki.client.cert)) is False
    assert can_sign_certificates(_cert(pki.self_signed.cert)) is False


# --- verification ---------------------------------------------------------------


def test_server_cert_verifies_against_ca(pki: DevPki) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store([_cert(pki.ca_cert)]))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    chain = verifier.verify(_cert(pki.server_cert), [])
    assert chain[-1] == _cert(pki.ca_cert)


def test_client_cert_verifies_against_ca(pki: DevPki) -> None:
    verifier = PolicyBuilder().store(Store([_cert(pki.ca_cert)])).build_client_verifier()
    verified = verifier.verify(_cert(pki.client.cert), [])
    assert x509.UniformResourceIdentifier("spiffe://mtls-gateway.local/client") in (
        verified.subjects or []
    )


def _server_context(pki: DevPki, *, trust_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Python 3.13 turns strict mode on by default; the dev certs must pass it.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=trust_pem)
    return ctx


def _client_context(pki: DevPki, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(pki.ca_cert)
    ctx.load_cert_chain(cert, key)
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes | None:
    """One TLS connection over loopback; returns the client DER the server saw."""
    outcome: dict[str, bytes | BaseException | None] = {}

    def serve(listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                outcome["der"] = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            outcome["error"] = exc

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        client_error: OSError | None = None
        try:
            with (
                socket.create_connection(listener.getsockname()[:2], timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                # TLS 1.3 clients learn of a rejected certificate on their first read.
                assert tls.recv(2) == b"ok"
        except OSError as exc:
            client_error = exc
        finally:
            thread.join(5)
    assert not thread.is_alive()
    # The server's view says why; the client only sees an alert or a reset.
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise error
    if client_error is not None:
        raise client_error
    der = outcome["der"]
    assert der is None or isinstance(der, bytes)
    return der


def test_ca_issued_client_handshake(pki: DevPki) -> None:
    server = _server_context(pki, trust_pem=pki.ca_cert.read_text())
    client = _client_context(pki, pki.client.cert, pki.client.key)
    seen = _handshake(server, client)
    assert seen == _cert(pki.client.cert).public_bytes(serialization.Encoding.DER)


def test_self_signed_client_handshake_when_pinned(pki: DevPki) -> None:
    server = _server_context(pki, trust_pem=pki.self_signed.cert.read_text())
    client = _client_context(pki, pki.self_signed.cert, pki.self_signed.key)
    seen = _handshake(server, client)
    assert seen == _cert(pki.self_signed.cert).public_bytes(serialization.Encoding.DER)


def test_self_signed_client_rejected_without_pin(pki: DevPki) -> None:
    # Guards the two handshake tests above against a server that accepts anything.
    server = _server_context(pki, trust_pem=pki.ca_cert.read_text())
    client = _client_context(pki, pki.self_signed.cert, pki.self_signed.key)
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        _handshake(server, client)


# --- reuse ----------------------------------------------------------------------


def test_reuse_returns_existing_files_unchanged(pki: DevPki) -> None:
    before = _snapshot(pki.directory)
    mtimes = {name: (pki.directory / name).stat().st_mtime_ns for name in FILES}
    again = init_dev_pki(pki.directory)
    assert again.created is False
    assert _snapshot(pki.directory) == before
    assert {name: (pki.directory / name).stat().st_mtime_ns for name in FILES} == mtimes
    assert again.client == pki.client
    assert again.self_signed == pki.self_signed


def test_reuse_false_regenerates(pki: DevPki) -> None:
    before = _snapshot(pki.directory)
    (pki.directory / "client.key").chmod(0o644)
    again = init_dev_pki(pki.directory, reuse=False)
    assert again.created is True
    after = _snapshot(pki.directory)
    assert all(after[name] != before[name] for name in FILES)
    assert again.client.thumbprint != pki.client.thumbprint
    assert again.client.subject == pki.client.subject
    # The old, too-open key file is replaced, not rewritten in place.
    assert stat.S_IMODE((pki.directory / "client.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in pki.directory.iterdir()) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
def test_partial_directory_names_missing_file(pki: DevPki, name: str) -> None:
    (pki.directory / name).unlink()
    before = {n: (pki.directory / n).read_bytes() for n in FILES if n != name}
    with pytest.raises(DevPkiError, match=name) as info:
        init_dev_pki(pki.directory)
    assert str(pki.directory / name) in str(info.value)
    assert "\n" not in str(info.value)
    # Nothing rewritten, nothing recreated.
    assert not (pki.directory / name).exists()
    assert {n: (pki.directory / n).read_bytes() for n in before} == before


def test_unparseable_certificate_is_named(pki: DevPki) -> None:
    pki.server_cert.write_text("not a certificate\n")
    with pytest.raises(DevPkiError, match=r"server\.pem: not a PEM certificate"):
        init_dev_pki(pki.directory)


def test_mismatched_key_is_named(pki: DevPki) -> None:
    pki.client.key.write_bytes(pki.server_key.read_bytes())
    with pytest.raises(DevPkiError, match=r"client\.key: private key does not match"):
        init_dev_pki(pki.directory)


def test_foreign_ca_is_named(pki: DevPki, tmp_path: Path) -> None:
    other = init_dev_pki(tmp_path / "other")
    pki.ca_cert.write_bytes(other.ca_cert.read_bytes())
    pki.ca_key.write_bytes(other.ca_key.read_bytes())
    with pytest.raises(DevPkiError, match=r"server\.pem: not issued by the CA"):
        init_dev_pki(pki.directory)


def test_missing_hostname_on_reuse_is_named(pki: DevPki) -> None:
    with pytest.raises(DevPkiError, match=r"server\.pem: does not cover gateway\.test"):
        init_dev_pki(pki.directory, hostnames=("localhost", "gateway.test"))


def test_custom_hostnames(tmp_path: Path) -> None:
    made = init_dev_pki(tmp_path, hostnames=["gateway.test", "10.0.0.7"])
    cert = _cert(made.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gateway.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert cert.subject.rfc4514_string() == "CN=gateway.test"


def test_empty_directory_is_filled(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("keep me")
    made = init_dev_pki(tmp_path)
    assert made.created is True
    assert (tmp_path / "unrelated.txt").read_text() == "keep me"
