"""gateway.listener.tls_material: trust material, the verdicts real handshakes record, and material swaps.

Handshakes run through the production TLS layer (gateway.listener) in front of
a tiny protocol that answers "OK" and remembers the connection's TlsSession,
so each test sees both what the client got and what the policy would decide on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.lifecycle import FileWatcher
from gateway.listener.config import TlsConfig
from gateway.listener.session import TlsSession
from gateway.listener.tls_material import ListenerTls, TlsMaterialError, load_material
from gateway.listener.tls_protocol import TlsServerProtocol
from gateway.trust.identity import identity_from_der
from tests.pki import NOW, Issued, Pki, dn, name

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
    session: TlsSession | None = None  # what the server side recorded


class _Answer(asyncio.Protocol):
    def __init__(self, seen: list[TlsSession]) -> None:
        self._seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._seen.append(transport.get_extra_info("ssl_object"))
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"OK")
        transport.close()


@dataclass
class Server:
    port: int
    sessions: list[TlsSession] = field(default_factory=list)

    async def connect(self, ctx: ssl.SSLContext) -> Outcome:
        """One fresh TLS connection (new context: no session to resume)."""
        before = len(self.sessions)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=ctx, server_hostname="localhost"
            )
        except (ssl.SSLError, ConnectionError):
            return Outcome(None, False)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        try:
            # Under TLS 1.3 a refused handshake shows up on the first read.
            data = await asyncio.wait_for(reader.read(2), 5)
        except (ssl.SSLError, ConnectionError):
            data = b""
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        session = self.sessions[before] if len(self.sessions) > before else None
        return Outcome(der, data == b"OK", session)


@contextlib.asynccontextmanager
async def serving(listener: ListenerTls) -> AsyncIterator[Server]:
    seen: list[TlsSession] = []

    def factory() -> asyncio.Protocol:
        return TlsServerProtocol(
            listener.context,
            lambda: _Answer(seen),
            handshake_timeout=5,
            observer=listener.handshakes,
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield Server(server.sockets[0].getsockname()[1], seen)
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
        "listeners[0].tls.client_ca",
        "listeners[0].tls.pinned_certs[0]",
        "listeners[0].tls.cert",
    ]
    assert problems[2].startswith(f"{WHERE}.cert: cannot use {pki.server.cert_path} with key ")
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "this is a private key, not a certificate"),
        (b"\x30\x03\x02\x01\x01", "not a PEM or DER certificate file"),
        (b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "not a PEM or DER"),
    ],
    ids=["a-key", "der-garbage", "pem-garbage"],
)
def test_a_client_ca_that_is_no_certificate_is_one_readable_line(
    pki: Pki, tmp_path: Path, content: bytes | None, says: str
) -> None:
    path = pki.server.key_path
    if content is not None:
        path = tmp_path / "client-ca.pem"
        path.write_bytes(content)
    with pytest.raises(TlsMaterialError) as info:
        load_material(tls_config(pki, client_ca=path), WHERE)
    (problem,) = info.value.problems
    assert problem.startswith(f"{WHERE}.client_ca: cannot read {path}: {says}")
    assert "\n" not in problem


def test_trust_material_of_a_valid_config(pki: Pki, self_signed: Issued) -> None:
    material = load_material(tls_config(pki, pinned=(self_signed.cert_path,)), WHERE)
    assert material.trust.ca_certificates == (pki.ca.cert,)
    assert material.server_not_after == pki.server.cert.not_valid_after_utc
    assert material.server_subject == "CN=localhost"
    # The deprecated pin is read and never trusted; its line names the replacement.
    (line,) = material.ignored_pins
    assert line.startswith(f"{WHERE}.pinned_certs[0]: deprecated")
    assert self_signed.thumbprint in line and "X509CertificateThumbprint" in line


def test_a_leaf_inside_client_ca_is_never_an_anchor(
    pki: Pki, client_cert: Issued, self_signed: Issued, tmp_path: Path
) -> None:
    bundle = _pem_file(tmp_path / "bundle.pem", pki.ca.cert, self_signed.cert, client_cert.cert)
    material = load_material(tls_config(pki, client_ca=bundle), WHERE)
    assert material.trust.ca_certificates == (pki.ca.cert,)
    assert len(material.ignored_pins) == 2
    assert self_signed.thumbprint in material.ignored_pins[0]


async def test_every_certificate_completes_the_handshake_with_its_verdict_recorded(
    pki: Pki, self_signed: Issued, client_cert: Issued, tmp_path: Path
) -> None:
    listener = ListenerTls(tls_config(pki), WHERE)
    rogue = Pki(tmp_path / "rogue", ca_name="Rogue CA").client("client")
    expired = pki.client(
        "old", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
    )
    async with serving(listener) as server:
        issued = await server.connect(pki.client_context(client_cert))
        assert issued.accepted and issued.session is not None
        assert issued.session.chain_verified and issued.session.peer_der == client_cert.der
        assert issued.session.alpn is None  # asyncio's client offers no ALPN
        assert issued.session.version in ("TLSv1.2", "TLSv1.3")

        anonymous = await server.connect(pki.client_context(None))  # client_certs: optional
        assert anonymous.accepted and anonymous.session is not None
        assert anonymous.session.peer_der is None

        for cert, errno in ((self_signed, 18), (rogue, 20), (expired, 10)):
            outcome = await server.connect(pki.client_context(cert))
            assert outcome.accepted and outcome.session is not None
            assert not outcome.session.chain_verified
            assert outcome.session.failure is not None
            assert (outcome.session.failure.depth, outcome.session.failure.errno) == (0, errno)
    assert listener.handshakes.started == listener.handshakes.completed == 5


async def test_a_leaf_only_client_ca_verifies_nothing(
    pki: Pki, self_signed: Issued, tmp_path: Path
) -> None:
    # Under the stdlib layer a leaf here was its own trust anchor (partial chain).
    bundle = _pem_file(tmp_path / "leaf.pem", self_signed.cert)
    listener = ListenerTls(tls_config(pki, client_ca=bundle), WHERE)
    async with serving(listener) as server:
        outcome = await server.connect(pki.client_context(self_signed))
        assert outcome.accepted and outcome.session is not None
        assert not outcome.session.chain_verified


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
    watcher = FileWatcher([listener])
    renewed = _server_cert(pki, "renewed")
    async with serving(listener) as server:
        first = await server.connect(pki.client_context(None))
        assert first.accepted and first.server_der == pki.server.der

        shutil.copy(renewed.cert_path, cert_path)
        shutil.copy(renewed.key_path, key_path)
        assert watcher.poll() == {"tls": True}
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


async def test_reload_swaps_trust_material(pki: Pki, client_cert: Issued, tmp_path: Path) -> None:
    anchors = _pem_file(tmp_path / "client-ca.pem", pki.ca.cert)
    other = Pki(tmp_path / "other", ca_name="Other Root CA")
    newcomer = other.client("newcomer")
    listener = ListenerTls(tls_config(pki, client_ca=anchors), WHERE)

    async def verified(cert: Issued) -> bool:
        outcome = await server.connect(pki.client_context(cert))
        assert outcome.accepted and outcome.session is not None
        return outcome.session.chain_verified

    async with serving(listener) as server:
        assert await verified(client_cert) and not await verified(newcomer)
        _pem_file(anchors, other.ca.cert)
        assert listener.reload() is True
        assert await verified(newcomer) and not await verified(client_cert)

        # A broken replacement is refused; the current anchors stay.
        anchors.write_bytes(b"-----BEGIN CERTIFICATE-----\ntruncated")
        assert listener.reload() is False
        assert listener.trust.ca_certificates == (other.ca.cert,)
        assert await verified(newcomer)


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
    async with serving(listener) as server:
        assert not (await server.connect(_legacy_client(pki, tls11))).accepted
        assert (await server.connect(_legacy_client(pki, ssl.TLSVersion.TLSv1_2))).accepted
    assert listener.handshakes.started == listener.handshakes.completed + 1

    # Control: the same client does speak TLS 1.1 to a server that allows it,
    # so the refusal above is the gateway's doing.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"OK")
        writer.close()

    plain = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=permissive)
    try:
        control = Server(plain.sockets[0].getsockname()[1])
        assert (await control.connect(_legacy_client(pki, tls11))).accepted
    finally:
        plain.close()
        await plain.wait_closed()


# --------------------------------------------------------------------------- resumed sessions


def test_trust_state_accepts(pki: Pki, tmp_path: Path) -> None:
    """What a resumed session is re-checked against: the anchors in force now."""
    past = {"not_before": NOW - dt.timedelta(days=10), "not_after": NOW - dt.timedelta(days=1)}
    issued = pki.client("issued")
    issued_expired = pki.client("issued-old", **past)
    stranger = pki.certificate(dn("stranger", ou=None), self_signed=True)
    # Another CA with the very same name: only the signature tells them apart.
    impostor_ca = Pki(tmp_path / "impostor", ca_name="Test Root CA")
    impostor = impostor_ca.client("client")
    trust = load_material(tls_config(pki, pinned=(stranger.cert_path,)), WHERE).trust

    def accepts(issued_cert: Issued) -> bool:
        return trust.accepts(identity_from_der(issued_cert.der))

    assert accepts(issued)
    assert not accepts(issued_expired)
    assert not accepts(stranger)  # a (deprecated) pin vouches for nothing
    assert not accepts(impostor)
