"""Certificate shapes an attacker (or a careless PKI) presents, through the whole stack.

Already covered elsewhere and kept there: unknown CA, expired, not yet valid
and unregistered self-signed certificates get a 403 naming the reason
(tests/test_auth.py); a CA-issued certificate with keyCertSign is never a PKI
client (test_auth.py); a self-signed certificate that can issue is admitted by
its thumbprint and mints nothing (test_auth.py); CRL revocation
(test_revocation.py); DN injection by a comma in a CN (test_auth.py,
test_dn.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.trust.chain import TrustPool
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    echoed_headers,
    name_secret,
    registry_client,
    thumbprint_secret,
)
from tests.pki import NOW, Issued, Pki, dn, name
from tests.security.conftest import MTLS_CLIENT
from tests.test_proxy import RawConnection, get

Outcome = int | str  # an HTTP status, or "handshake refused"
REFUSED = "handshake refused"


async def attempt(
    gw: GatewayUnderTest, cert: Issued | None, *, chain: bytes | None = None, path: str = "/x"
) -> tuple[Outcome, dict[str, list[str]]]:
    """One request on a new connection presenting ``cert`` (with ``chain`` if given)."""
    context = gw.pki.client_context(None)
    if cert is not None:
        cert_file = cert.cert_path
        if chain is not None:
            cert_file = cert.cert_path.with_suffix(".chain.pem")
            cert_file.write_bytes(chain)
        context.load_cert_chain(cert_file, cert.key_path)
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gw.port, ssl=context, server_hostname="localhost"
            )
            conn = RawConnection(reader, writer)
            try:
                response = await conn.request(get(path))
            finally:
                await conn.close()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        # TLS 1.3: the client learns of the server's alert on its first read.
        return REFUSED, {}
    if response.status == 200:
        return 200, echoed_headers(response.json())
    return response.status, {}


def with_eku(pki: Pki, cert: Issued, usages: list[x509.ObjectIdentifier], signer: Issued) -> Issued:
    """``cert`` re-signed with exactly these extended key usages."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.cert.subject)
        .issuer_name(signer.cert.subject)
        .public_key(cert.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.cert.not_valid_before_utc)
        .not_valid_after(cert.cert.not_valid_after_utc)
    )
    for ext in cert.cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    signed = builder.sign(signer.key, hashes.SHA256())
    cert.cert_path.write_bytes(signed.public_bytes(serialization.Encoding.PEM))
    return Issued(signed, cert.key, cert.cert_path, cert.key_path)


EKUS: dict[str, list[x509.ObjectIdentifier] | None] = {
    "clientAuth": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "serverAuth+clientAuth": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "no EKU extension": None,
    "serverAuth": [ExtendedKeyUsageOID.SERVER_AUTH],
    "codeSigning": [ExtendedKeyUsageOID.CODE_SIGNING],
    "anyExtendedKeyUsage": [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
}
# OpenSSL's server side checks the "sslclient" purpose on the leaf: an EKU
# extension, when present, must name clientAuth (anyExtendedKeyUsage alone
# does not do).  The gateway keeps that rule for PKI secrets (the chain must
# verify); a thumbprint secret names one exact certificate, whatever its
# extensions, as IdentityServer's thumbprint validator does.
ACCEPTED_EKUS = {"clientAuth", "serverAuth+clientAuth", "no EKU extension"}


@pytest.mark.parametrize(
    "secret", ["name", "thumbprint", "thumbprint-self-signed"], ids=lambda s: f"by-{s}"
)
@pytest.mark.parametrize("eku", list(EKUS))
async def test_extended_key_usage_must_allow_client_auth_for_pki_secrets(
    make_gateway: MakeGateway, pki: Pki, eku: str, secret: str
) -> None:
    self_signed = secret == "thumbprint-self-signed"
    base = pki.certificate(dn(f"eku-{len(eku)}-{secret}"), self_signed=self_signed, eku=None)
    usages = EKUS[eku]
    cert = base if usages is None else with_eku(pki, base, usages, base if self_signed else pki.ca)
    registered = (
        name_secret(f"CN=eku-{len(eku)}-{secret}, OU=production, O=company")
        if secret == "name"
        else thumbprint_secret(cert.thumbprint)
    )
    gw = await make_gateway(clients=[registry_client("eku.client", registered)])
    outcome, headers = await attempt(gw, cert)
    if eku in ACCEPTED_EKUS or secret != "name":
        assert outcome == 200
        assert headers["x-client-id"] == ["eku.client"]
    else:
        assert outcome == 403
    if not self_signed:
        # Certificates forwarded by a trusted load balancer are verified in
        # Python (gateway/trust/chain.py): the same certificate gets the same answer.
        pool = TrustPool.of("client_ca", [pki.ca.cert])
        verified = pool.verify(cert.cert, [], dt.datetime.now(dt.UTC))
        assert (verified is not None) == (eku in ACCEPTED_EKUS)


async def test_ca_true_leaf_named_like_a_registered_client_is_403(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    # Issued by the trusted CA with CA:TRUE and the registered DN: it passes
    # the handshake (a CA certificate is a valid TLS client to OpenSSL), but
    # its key can issue certificates, so it is never a client.
    ca_leaf = pki.certificate(dn("client"), issuer=pki.ca, ca=True)
    gw = await make_gateway(clients=[MTLS_CLIENT])
    assert (await attempt(gw, ca_leaf))[0] == 403
    assert (await attempt(gw, client_cert))[0] == 200


def chain_of(pki: Pki, depth: int, label: str, **leaf: object) -> tuple[Issued, list[Issued]]:
    """A leaf under ``depth`` intermediates below the test CA; intermediates leaf-side first."""
    issuer = pki.ca
    intermediates: list[Issued] = []
    for i in range(depth):
        issuer = pki.certificate(
            name((NameOID.ORGANIZATION_NAME, "Test"), (NameOID.COMMON_NAME, f"{label} int {i}")),
            issuer=issuer,
            ca=True,
        )
        intermediates.insert(0, issuer)
    return pki.certificate(dn(label), issuer=issuer, **leaf), intermediates  # type: ignore[arg-type]


@pytest.mark.parametrize(("depth", "accepted"), [(10, True), (120, False)])
async def test_very_long_chains_are_decided_quickly(
    make_gateway: MakeGateway, pki: Pki, depth: int, accepted: bool
) -> None:
    leaf, intermediates = chain_of(pki, depth, f"deep-{depth}")
    gw = await make_gateway(
        clients=[registry_client("deep", name_secret(f"CN=deep-{depth}, OU=production, O=company"))]
    )
    chain = leaf.pem + b"".join(c.pem for c in intermediates)
    started = time.monotonic()
    outcome, headers = await attempt(gw, leaf, chain=chain)
    elapsed = time.monotonic() - started
    # OpenSSL's default verify depth (100) is the limit; either way the answer
    # is quick, and the gateway serves the next caller.
    assert elapsed < 3, f"{depth} intermediates took {elapsed:.1f}s"
    if accepted:
        assert outcome == 200
        assert headers["x-client-id"] == ["deep"]
    else:
        assert outcome == 403  # the handshake completes; the chain never verified
    assert (await attempt(gw, pki.client("client")))[0] == 403  # served, just not registered


async def test_chain_without_its_intermediate_needs_the_intermediate_in_client_ca(
    make_gateway: MakeGateway, pki: Pki, tmp_path: object
) -> None:
    leaf, (intermediate,) = chain_of(pki, 1, "via-intermediate")
    clients = [registry_client("mid", name_secret("CN=via-intermediate, OU=production, O=company"))]
    gw = await make_gateway(clients=clients)
    # The leaf alone: nothing links it to the root in client_ca.
    assert (await attempt(gw, leaf))[0] == 403
    # Sent with its intermediate, the chain builds.
    assert (await attempt(gw, leaf, chain=leaf.pem + intermediate.pem))[0] == 200
    # Or the operator trusts the intermediate (partial chain).
    bundle = pki.directory / "root-and-intermediate.pem"
    bundle.write_bytes(pki.ca.pem + intermediate.pem)
    gw2 = await make_gateway(clients=clients, tls={"client_ca": str(bundle)})
    assert (await attempt(gw2, leaf))[0] == 200


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
async def test_chain_through_an_intermediate_outside_its_validity_is_refused(
    make_gateway: MakeGateway, pki: Pki, when: str
) -> None:
    start, end = (
        (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1))
        if when == "expired"
        else (NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=10))
    )
    intermediate = pki.certificate(
        name((NameOID.COMMON_NAME, f"{when} intermediate")),
        ca=True,
        not_before=start,
        not_after=end,
    )
    leaf = pki.certificate(dn(f"under-{when}"), issuer=intermediate)
    gw = await make_gateway(
        clients=[registry_client("c", name_secret(f"CN=under-{when}, OU=production, O=company"))]
    )
    assert (await attempt(gw, leaf, chain=leaf.pem + intermediate.pem))[0] == 403


async def test_multi_valued_unicode_and_control_character_rdns_through_the_whole_stack(
    make_gateway: MakeGateway, pki: Pki, echo_upstream: Upstream
) -> None:
    subject = name(
        (NameOID.ORGANIZATION_NAME, "Société Générale"),
        [(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"), (NameOID.COMMON_NAME, "名前")],
        # A CN that tries to end the header and start another.
        (NameOID.COMMON_NAME, "evil\r\nX-Client-Id: admin"),
    )
    cert = pki.certificate(subject)
    registered = 'CN="evil\r\nX-Client-Id: admin", CN=名前 + OU=ops, O=Société Générale'
    gw = await make_gateway(
        clients=[registry_client("unicode.client", name_secret(registered))],
        routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": "client"}],
    )
    outcome, headers = await attempt(gw, cert)
    assert outcome == 200
    assert headers["x-client-id"] == ["unicode.client"]  # one, the gateway's
    (sent,) = headers["x-client-cert-subject"]
    assert sent.isascii() and sent.isprintable()
    assert unquote(sent) == 'CN="evil\r\nX-Client-Id: admin", OU=ops + CN=名前, O=Société Générale'
    (xfcc,) = headers["x-forwarded-client-cert"]
    assert xfcc.isascii() and xfcc.isprintable()
    assert "\r" not in unquote(xfcc.split("Subject=", 1)[0])
    # The same certificate authenticates at the token endpoint.
    form = {"grant_type": "client_credentials", "client_id": "unicode.client"}
    async with (
        gw.session(cert) as session,
        session.post(gw.url + "/connect/token", data=form) as r,
    ):
        assert r.status == 200, await r.text()


@pytest.mark.parametrize(
    ("registered", "outcome"),
    [
        ("CN=second, CN=first, O=company", 200),  # exactly the certificate's RDNs
        ("CN=first, CN=second, O=company", 403),  # order matters: another name
        ("CN=second, O=company", 403),  # one CN fewer: another name
        ("CN=first, O=company", 403),
    ],
)
async def test_duplicate_attributes_match_only_the_exact_rdn_sequence(
    make_gateway: MakeGateway, pki: Pki, registered: str, outcome: int
) -> None:
    cert = pki.certificate(
        name(
            (NameOID.ORGANIZATION_NAME, "company"),
            (NameOID.COMMON_NAME, "first"),
            (NameOID.COMMON_NAME, "second"),
        )
    )
    gw = await make_gateway(clients=[registry_client("dup", name_secret(registered))])
    result, headers = await attempt(gw, cert)
    assert result == outcome
    if outcome == 200:
        assert headers["x-client-cert-subject"] == ["CN=second, CN=first, O=company"]


def _blocking_get(
    context: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None
) -> tuple[Outcome, bool, ssl.SSLSession | None]:
    """One request on a blocking TLS socket, offering ``session`` for resumption."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    while chunk := tls.recv(65536):
                        data += chunk
                reused, ticket = bool(tls.session_reused), tls.session
        except (ssl.SSLError, ConnectionError):
            return REFUSED, False, None
    if not data:
        return REFUSED, reused, ticket
    return int(data.split(b" ", 2)[1]), reused, ticket


async def test_a_resumed_session_is_rechecked_against_the_current_trust_store(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued, tmp_path: Path
) -> None:
    # OpenSSL skips chain verification when a session resumes, so a client
    # whose CA was removed must not get in on an old ticket.  Each reload
    # builds a new context with new ticket keys: the old ticket no longer
    # resumes at all (and were it to, TrustState.accepts re-checks it).
    bundle = tmp_path / "client-ca.pem"
    bundle.write_bytes(pki.ca.pem)
    gw = await make_gateway(clients=[MTLS_CLIENT], tls={"client_ca": str(bundle)})
    context = gw.pki.client_context(client_cert)
    status_, _, ticket = await asyncio.to_thread(_blocking_get, context, gw.port)
    assert status_ == 200 and ticket is not None
    # Control: with the CA still trusted, the session resumes and is served.
    status_, reused, ticket = await asyncio.to_thread(_blocking_get, context, gw.port, ticket)
    assert (status_, reused) == (200, True)

    bundle.write_bytes(Pki(tmp_path / "other", "Other CA").ca.pem)  # the client's CA is gone
    assert await gw.gateway.reload() is True
    resumed = await asyncio.to_thread(_blocking_get, context, gw.port, ticket)
    assert resumed == (403, False, resumed[2])
    full = await asyncio.to_thread(_blocking_get, context, gw.port)
    assert full[0] == 403  # a full handshake: not issued by a trusted CA any more
