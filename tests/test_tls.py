"""gateway.tls: trust material, refused pins, and certificate swaps seen by real handshakes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import TlsConfig
from gateway.identity import identity_from_der
from gateway.tls import ListenerTls, TlsMaterialError, load_material
from tests.pki import NOW, Issued, Pki, dn, name
from tests.test_identity import v1_certificate

WHERE = "gateway.yaml:listeners[0].tls"


def tls_config(
    pki: Pki,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    client_ca: Path | None = None,
    pinned: tuple[Path, ...] = (),
    no_ca: bool = False,
) -> TlsConfig:
    return TlsConfig(
        cert=cert or pki.server.cert_path,
        key=key or pki.server.key_path,
        client_ca=None if no_ca else (client_ca or pki.ca.cert_path),
        client_certs="optional",
        crl=None,
        pinned_certs=pinned,
        min_version="1.2",
    )


@dataclass
class Outcome:
    server_der: bytes | None  # the certificate the server presented
    accepted: bool  # the server finished the handshake and answered


@dataclass
class Server:
    port: int

    async def connect(self, ctx: ssl.SSLContext) -> Outcome:
        """One fresh TLS connection (new context: no session to resume)."""
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=ctx, server_hostname="localhost"
            )
        except (ssl.SSLError, ConnectionError):
            return Outcome(None, False)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        try:
            # Under TLS 1.3 a refused client certificate shows up on the first read.
            data = await asyncio.wait_for(reader.read(2), 5)
        except (ssl.SSLError, ConnectionError):
            data = b""
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        return Outcome(der, data == b"OK")


@contextlib.asynccontextmanager
async def serving(context: ssl.SSLContext) -> AsyncIterator[Server]:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"OK")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield Server(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def _pem_file(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _server_cert(pki: Pki, cn: str) -> Issued:
    return pki.certificate(
        name((NameOID.COMMON_NAME, cn)),
        dns=["localhost"],
        ips=["127.0.0.1"],
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
    )


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def self_signed(pki: Pki) -> Issued:
    return pki.certificate(dn("self", ou=None), self_signed=True)


@pytest.mark.parametrize("kind", ["ca-true", "key-cert-sign", "x509-v1"])
def test_pin_that_can_issue_certificates_is_refused(
    pki: Pki, self_signed: Issued, tmp_path: Path, kind: str
) -> None:
    if kind == "ca-true":
        bad = pki.ca.cert_path
        subject = "CN=Test Root CA, O=Test"
    elif kind == "key-cert-sign":
        bad = pki.certificate(dn("signer"), self_signed=True, key_cert_sign=True).cert_path
        subject = "CN=signer, OU=production, O=company"
    else:
        bad = _pem_file(tmp_path / "v1.pem", v1_certificate(dn("legacy"))[0])
        subject = "CN=legacy, OU=production, O=company"
    with pytest.raises(TlsMaterialError) as info:
        load_material(tls_config(pki, pinned=(self_signed.cert_path, bad)), WHERE)
    (problem,) = info.value.problems
    assert problem.startswith(f"{WHERE}.pinned_certs[1]: {bad}: refusing to pin '{subject}'")


def test_every_material_problem_at_once(pki: Pki, client_cert: Issued, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    config = tls_config(
        pki,
        key=client_cert.key_path,  # not the server certificate's key
        client_ca=empty,
        pinned=(garbage, pki.ca.cert_path),
    )
    with pytest.raises(TlsMaterialError) as info:
        load_material(config, WHERE)
    problems = info.value.problems
    assert [p.split(":")[1] for p in problems] == [
        "listeners[0].tls.cert",
        "listeners[0].tls.client_ca",
        "listeners[0].tls.pinned_certs[0]",
        "listeners[0].tls.pinned_certs[1]",
    ]
    assert problems[0].startswith(f"{WHERE}.cert: cannot use {pki.server.cert_path} with key ")


def test_trust_material_of_a_valid_config(pki: Pki, self_signed: Issued) -> None:
    material = load_material(tls_config(pki, pinned=(self_signed.cert_path,)), WHERE)
    assert material.trust.ca_certificates == (pki.ca.cert,)
    assert material.trust.pinned_thumbprints == {self_signed.thumbprint}
    assert material.server_not_after == pki.server.cert.not_valid_after_utc


def test_leaf_inside_client_ca_is_treated_as_a_pin(
    pki: Pki, client_cert: Issued, self_signed: Issued, tmp_path: Path
) -> None:
    bundle = _pem_file(tmp_path / "bundle.pem", pki.ca.cert, self_signed.cert, client_cert.cert)
    trust = load_material(tls_config(pki, client_ca=bundle), WHERE).trust
    assert trust.ca_certificates == (pki.ca.cert,)
    assert trust.pinned_thumbprints == {self_signed.thumbprint, client_cert.thumbprint}
    # A pin can only ever match thumbprint secrets (registry matching, pinned=True).
    assert trust.is_pinned(identity_from_der(self_signed.der))


async def test_pinned_self_signed_passes_the_handshake_and_others_do_not(
    pki: Pki, self_signed: Issued, client_cert: Issued
) -> None:
    listener = ListenerTls(tls_config(pki, pinned=(self_signed.cert_path,)), WHERE)
    stranger = pki.certificate(dn("stranger", ou=None), self_signed=True)
    async with serving(listener.listening_context) as server:
        assert (await server.connect(pki.client_context(self_signed))).accepted
        assert (await server.connect(pki.client_context(client_cert))).accepted  # CA-issued
        assert (await server.connect(pki.client_context(None))).accepted  # optional
        assert not (await server.connect(pki.client_context(stranger))).accepted


async def test_leaf_only_client_ca_accepts_that_leaf(
    pki: Pki, self_signed: Issued, tmp_path: Path
) -> None:
    # No CA at all: the leaf alone is the trust store (partial chain).
    bundle = _pem_file(tmp_path / "leaf.pem", self_signed.cert)
    listener = ListenerTls(tls_config(pki, client_ca=bundle), WHERE)
    async with serving(listener.listening_context) as server:
        assert (await server.connect(pki.client_context(self_signed))).accepted


# --------------------------------------------------------------------------- reload


@pytest.fixture
def rotating(pki: Pki, tmp_path: Path) -> tuple[Path, Path]:
    """Server cert and key in files of their own, to be replaced by the test."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server.cert_path, cert)
    shutil.copy(pki.server.key_path, key)
    return cert, key


async def test_reload_swaps_the_server_certificate_for_new_handshakes(
    pki: Pki, rotating: tuple[Path, Path]
) -> None:
    cert_path, key_path = rotating
    listener = ListenerTls(tls_config(pki, cert=cert_path, key=key_path), WHERE)
    renewed = _server_cert(pki, "renewed")
    async with serving(listener.listening_context) as server:
        first = await server.connect(pki.client_context(None))
        assert first.accepted and first.server_der == pki.server.der

        shutil.copy(renewed.cert_path, cert_path)
        shutil.copy(renewed.key_path, key_path)
        assert listener.reload_if_changed() is True
        generation = listener.trust.generation

        second = await server.connect(pki.client_context(None))
        assert second.accepted and second.server_der == renewed.der
        assert listener.material.server_not_after == renewed.cert.not_valid_after_utc

        # A replacement that cannot be used keeps the current certificate.
        cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\ntruncated")
        assert listener.reload() is False
        assert listener.reload_failures == 1
        assert listener.trust.generation == generation
        third = await server.connect(pki.client_context(None))
        assert third.accepted and third.server_der == renewed.der

        # A certificate with the wrong key is just as unusable.
        shutil.copy(pki.server.cert_path, cert_path)  # key still the renewed one
        assert listener.reload() is False
        assert listener.reload_failures == 2
        assert (await server.connect(pki.client_context(None))).server_der == renewed.der


async def test_reload_swaps_trust_material(pki: Pki, self_signed: Issued, tmp_path: Path) -> None:
    pins = _pem_file(tmp_path / "pins.pem", self_signed.cert)
    newcomer = pki.certificate(dn("newcomer", ou=None), self_signed=True)
    listener = ListenerTls(tls_config(pki, pinned=(pins,)), WHERE)
    async with serving(listener.listening_context) as server:
        assert not (await server.connect(pki.client_context(newcomer))).accepted
        _pem_file(pins, newcomer.cert)
        assert listener.reload() is True
        assert (await server.connect(pki.client_context(newcomer))).accepted
        assert not (await server.connect(pki.client_context(self_signed))).accepted

        # A CA slipped into the pin file is refused; the current pins stay.
        _pem_file(pins, pki.ca.cert)
        assert listener.reload() is False
        assert listener.trust.pinned_thumbprints == {newcomer.thumbprint}
        assert (await server.connect(pki.client_context(newcomer))).accepted


# --------------------------------------------------------------------------- protocol


def _legacy_client(pki: Pki, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = pki.client_context(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 members
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.0/1.1 at all
    return ctx


async def test_tls_1_1_client_is_refused(pki: Pki) -> None:
    listener = ListenerTls(tls_config(pki), WHERE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11 = ssl.TLSVersion.TLSv1_1
    async with serving(listener.listening_context) as server:
        assert not (await server.connect(_legacy_client(pki, tls11))).accepted
        assert (await server.connect(_legacy_client(pki, ssl.TLSVersion.TLSv1_2))).accepted

    # Control: the same client does speak TLS 1.1 to a server that allows it,
    # so the refusal above is the gateway's doing.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    async with serving(permissive) as server:
        assert (await server.connect(_legacy_client(pki, tls11))).accepted


# --------------------------------------------------------------------------- resumed sessions


def test_trust_state_accepts(pki: Pki, tmp_path: Path) -> None:
    past = {"not_before": NOW - dt.timedelta(days=10), "not_after": NOW - dt.timedelta(days=1)}
    pinned = pki.certificate(dn("pinned", ou=None), self_signed=True)
    pinned_expired = pki.certificate(dn("pinned-old", ou=None), self_signed=True, **past)  # type: ignore[arg-type]
    issued = pki.client("issued")
    issued_expired = pki.client("issued-old", **past)
    stranger = pki.certificate(dn("stranger", ou=None), self_signed=True)
    # Another CA with the very same name: only the signature tells them apart.
    impostor_ca = Pki(tmp_path / "impostor", ca_name="Test Root CA")
    impostor = impostor_ca.client("client")

    trust = load_material(
        tls_config(pki, pinned=(pinned.cert_path, pinned_expired.cert_path)), WHERE
    ).trust

    def accepts(issued_cert: Issued) -> bool:
        return trust.accepts(identity_from_der(issued_cert.der))

    assert accepts(pinned)
    assert accepts(issued)
    assert not accepts(pinned_expired)  # a full handshake refuses it too
    assert not accepts(issued_expired)
    assert not accepts(stranger)
    assert not accepts(impostor)


async def test_expired_pin_is_refused_by_a_full_handshake(pki: Pki) -> None:
    # The fact TrustState.accepts mirrors for resumed sessions.
    expired = pki.certificate(
        dn("pinned-old", ou=None),
        self_signed=True,
        not_before=NOW - dt.timedelta(days=10),
        not_after=NOW - dt.timedelta(days=1),
    )
    listener = ListenerTls(tls_config(pki, pinned=(expired.cert_path,)), WHERE)
    async with serving(listener.listening_context) as server:
        assert not (await server.connect(pki.client_context(expired))).accepted
