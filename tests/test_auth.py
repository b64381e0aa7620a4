"""Who gets through: client certificates against the registry, over real TLS.

Each test starts the real gateway on port 0 in front of the echo upstream and
presents a certificate made for it.  An accepted caller is proven by the
identity headers the upstream received; a refused one by the exact outcome:
a failed handshake, or a 401/403 JSON answer that never reached the upstream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.registry.yaml_file import YamlRegistry
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    echoed_headers,
    name_secret,
    registry_client,
    thumbprint_secret,
)
from tests.pki import NOW, Issued, Pki, dn, name
from tests.test_proxy import RawConnection, get

CLIENT_DN = "CN=client, OU=production, O=company"
MTLS_CLIENT = registry_client("mtls.client", name_secret(CLIENT_DN))


async def call(gw: GatewayUnderTest, cert: Issued | None, path: str = "/") -> tuple[int, Any]:
    """Status and JSON body of one request on a fresh connection."""
    async with gw.session(cert) as session, session.get(gw.url + path) as r:
        return r.status, await r.json()


async def assert_accepted_as(gw: GatewayUnderTest, cert: Issued, client_id: str) -> None:
    status, body = await call(gw, cert)
    assert status == 200, body
    seen = echoed_headers(body)
    assert seen["x-client-id"] == [client_id]
    assert seen["x-client-cert-thumbprint"] == [cert.thumbprint]


async def assert_refused(
    gw: GatewayUnderTest, cert: Issued | None, status: int, error: str
) -> None:
    async with gw.session(cert) as session, session.get(gw.url + "/") as r:
        assert r.status == status
        assert r.content_type == "application/json"
        body = await r.json()
    assert body["error"] == error
    assert "x-client-id" not in str(body).lower()  # an error body, not an echo


async def assert_refused_naming(
    gw: GatewayUnderTest,
    cert: Issued,
    reason: str,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """403 JSON naming the reason and the thumbprint; one log line and the metric say why."""
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        async with gw.session(cert) as session, session.get(gw.url + "/") as r:
            assert r.status == 403
            assert r.content_type == "application/json"
            body = await r.json()
    assert body["error"] == "access_denied"
    assert reason in body["error_description"], body
    assert body["thumbprint"] == cert.thumbprint
    lines = [r for r in caplog.records if getattr(r, "event", "") == "auth_refused"]
    assert len(lines) == 1, [r.__dict__ for r in lines]
    assert reason in str(getattr(lines[0], "reason", ""))
    assert getattr(lines[0], "thumbprint", None) == cert.thumbprint
    assert getattr(lines[0], "subject", None)
    metrics = gw.gateway.metrics.render().decode()
    assert f'mtls_gateway_auth_refusals_total{{reason="{kind}"}} 1.0' in metrics, metrics


async def assert_handshake_refused(gw: GatewayUnderTest, cert: Issued | None) -> None:
    """The TLS layer refuses: the first request fails on the connection, no status.

    asyncio closes the connection when verification fails, so the client sees
    a disconnect on its first read (TLS 1.3 finishes the client's side of the
    handshake before the server checks the certificate) rather than a status.
    """
    async with gw.session(cert) as session:
        with pytest.raises(aiohttp.ClientConnectionError) as exc:
            async with session.get(gw.url + "/") as r:
                pytest.fail(f"expected a refused handshake, got HTTP {r.status}")
    # Not the client distrusting the server: that would prove nothing here.
    assert not isinstance(exc.value, aiohttp.ClientConnectorCertificateError)


# --- each secret type accepted ------------------------------------------------------

SAN_CASES = [
    # (secret type, certificate SANs, secret value as an operator would write it)
    ("X509SanDns", {"dns": ["api.example.org"]}, "API.Example.org."),
    (
        "X509SanUri",
        {"uris": ["spiffe://example.org/ns/prod/sa/api"]},
        "spiffe://example.org/ns/prod/sa/api",
    ),
    ("X509SanIp", {"ips": ["10.1.2.3"]}, "10.1.2.3"),
    ("X509SanIp", {"ips": ["2001:db8::7"]}, "2001:DB8:0:0::7"),
    ("X509SanEmail", {"emails": ["svc@example.org"]}, "svc@EXAMPLE.org"),
]


@pytest.mark.parametrize(
    ("kind", "sans", "value"), SAN_CASES, ids=[f"{c[0]}-{c[2]}" for c in SAN_CASES]
)
async def test_san_secret_accepted(
    make_gateway: MakeGateway, pki: Pki, kind: str, sans: dict[str, list[str]], value: str
) -> None:
    # The subject is registered nowhere: only the SAN can make the match.
    cert = pki.client(f"san-{kind.lower()}", **sans)
    gw = await make_gateway(
        clients=[MTLS_CLIENT, registry_client("svc", {"type": kind, "value": value})]
    )
    await assert_accepted_as(gw, cert, "svc")


@pytest.mark.parametrize(
    ("sans", "secret"),
    [
        ({"dns": ["evil-api.example.org"]}, {"type": "X509SanDns", "value": "api.example.org"}),
        ({"dns": ["api.example.org.evil"]}, {"type": "X509SanDns", "value": "api.example.org"}),
        (
            {"uris": ["spiffe://example.org/ns/prod/sa/api/x"]},
            {"type": "X509SanUri", "value": "spiffe://example.org/ns/prod/sa/api"},
        ),
        ({"ips": ["10.1.2.30"]}, {"type": "X509SanIp", "value": "10.1.2.3"}),
        ({"emails": ["SVC@example.org"]}, {"type": "X509SanEmail", "value": "svc@example.org"}),
        # A URI in a DNS secret (and the reverse) names nothing.
        ({"uris": ["api.example.org"]}, {"type": "X509SanDns", "value": "api.example.org"}),
    ],
)
async def test_san_secret_near_miss_is_403(
    make_gateway: MakeGateway, pki: Pki, sans: dict[str, list[str]], secret: dict[str, str]
) -> None:
    cert = pki.client("near-miss", **sans)
    gw = await make_gateway(clients=[registry_client("svc", secret)])
    await assert_refused(gw, cert, 403, "access_denied")


async def test_certificate_name_secret_accepted(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    status, body = await call(gw, client_cert)
    assert status == 200
    seen = echoed_headers(body)
    assert seen["x-client-id"] == ["mtls.client"]
    assert seen["x-client-cert-subject"] == [CLIENT_DN]


async def test_certificate_name_secret_compares_parsed_names(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    # The RFC 4514 spelling, other case and spacing: the same parsed DN.
    gw = await make_gateway(
        clients=[registry_client("c", name_secret("cn=Client,ou=Production , o=COMPANY"))]
    )
    await assert_accepted_as(gw, client_cert, "c")


async def test_thumbprint_secret_accepted_for_ca_issued_certificate(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    cert = pki.client("thumb-pinned-leaf")
    gw = await make_gateway(
        clients=[MTLS_CLIENT, registry_client("tp", thumbprint_secret(cert.thumbprint))]
    )
    await assert_accepted_as(gw, cert, "tp")


async def test_thumbprint_secret_alone_admits_a_self_signed_certificate(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    """IdentityServer's self-issued client: the registry entry is all it takes (no pin file)."""
    cert = pki.certificate(dn("self-issued"), self_signed=True)
    # As copied from a Windows certificate dialog or `openssl x509 -fingerprint`.
    pasted = ":".join(cert.thumbprint[i : i + 2] for i in range(0, len(cert.thumbprint), 2)).upper()
    gw = await make_gateway(clients=[registry_client("self", thumbprint_secret(pasted))])
    await assert_accepted_as(gw, cert, "self")


async def test_client_with_two_secrets_accepts_old_and_new_certificate(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    old = pki.client("rotating-2025")
    new = pki.certificate(dn("rotating-2026"), self_signed=True)
    stranger = pki.client("rotating-2024")
    gw = await make_gateway(
        clients=[
            registry_client(
                "rotating",
                name_secret("CN=rotating-2025, OU=production, O=company"),
                thumbprint_secret(new.thumbprint),
            )
        ],
    )
    await assert_accepted_as(gw, old, "rotating")
    await assert_accepted_as(gw, new, "rotating")
    await assert_refused(gw, stranger, 403, "access_denied")


# --- refused, with the right outcome ------------------------------------------------


async def test_unknown_ca_is_403_naming_the_reason(
    make_gateway: MakeGateway, client_cert: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = Pki(tmp_path / "other", ca_name="Other Root CA")
    # Same DN as the registered client: only the issuing CA differs.
    impostor = other.client("client")
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused_naming(gw, impostor, "not issued by a trusted CA", "untrusted_ca", caplog)
    await assert_accepted_as(gw, client_cert, "mtls.client")


async def test_expired_certificate_is_403_naming_the_reason(
    make_gateway: MakeGateway, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    expired = pki.client(
        "client", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
    )
    gw = await make_gateway(
        clients=[
            registry_client("c", name_secret(CLIENT_DN), thumbprint_secret(expired.thumbprint))
        ]
    )
    await assert_refused_naming(gw, expired, "expired", "expired", caplog)


async def test_not_yet_valid_certificate_is_403_naming_the_reason(
    make_gateway: MakeGateway, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    early = pki.client(
        "client", not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=10)
    )
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused_naming(gw, early, "not yet valid", "not_yet_valid", caplog)


async def test_server_auth_only_certificate_is_403_naming_the_reason(
    make_gateway: MakeGateway, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    # CA-issued and named like the client, but its extendedKeyUsage is serverAuth only.
    server_only = pki.client("client", eku=ExtendedKeyUsageOID.SERVER_AUTH)
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused_naming(gw, server_only, "client authentication", "wrong_purpose", caplog)


def _handshake_then_read(port: int, context: ssl.SSLContext) -> str:
    """Handshake, send a request, read: the alert the server sent, or what came back."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        try:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(65536).decode("latin-1")
        except ssl.SSLError as exc:
            return f"alert: {exc.reason}"


@pytest.mark.parametrize(
    ("shape", "alert"),
    [("untrusted_ca", "TLSV1_ALERT_UNKNOWN_CA"), ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED")],
)
async def test_alert_mode_ends_untrusted_handshakes_with_an_alert_the_client_sees(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued, tmp_path: Path, shape: str, alert: str
) -> None:
    if shape == "untrusted_ca":
        refused = Pki(tmp_path / "other", ca_name="Other Root CA").client("client")
    else:
        refused = pki.client(
            "client", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
        )
    gw = await make_gateway(clients=[MTLS_CLIENT], tls={"untrusted_certificates": "alert"})
    answer = await asyncio.to_thread(_handshake_then_read, gw.port, pki.client_context(refused))
    assert answer == f"alert: {alert}"
    metrics = gw.gateway.metrics.render().decode()
    assert f'mtls_gateway_tls_handshake_failures_total{{reason="{shape}"}} 1.0' in metrics
    answer = await asyncio.to_thread(_handshake_then_read, gw.port, pki.client_context(client_cert))
    assert answer.startswith("HTTP/1.1 200"), answer


async def test_dn_injection_does_not_match(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    # One CN whose text is "client, OU=production", under O=company, no OU:
    # as a raw string it reads exactly like the registered DN.
    injected = pki.certificate(
        name((NameOID.ORGANIZATION_NAME, "company"), (NameOID.COMMON_NAME, "client, OU=production"))
    )
    gw = await make_gateway(clients=[MTLS_CLIENT])
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        await assert_refused(gw, injected, 403, "access_denied")
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "auth_refused"]
    assert [getattr(r, "thumbprint", None) for r in refusals] == [injected.thumbprint]
    await assert_accepted_as(gw, client_cert, "mtls.client")


async def test_wrong_issuer_pin_is_403(make_gateway: MakeGateway, pki: Pki) -> None:
    pinned_elsewhere = pki.client("issuer-wrong")
    pinned_here = pki.client("issuer-right")
    gw = await make_gateway(
        clients=[
            registry_client(
                "wrong",
                name_secret("CN=issuer-wrong, OU=production, O=company"),
                issuer="CN=Other Root CA, O=Test",
            ),
            registry_client(
                "right",
                name_secret("CN=issuer-right, OU=production, O=company"),
                issuer="CN=Test Root CA, O=Test",
            ),
        ]
    )
    await assert_refused(gw, pinned_elsewhere, 403, "access_denied")
    await assert_accepted_as(gw, pinned_here, "right")


async def test_disabled_client_is_403(make_gateway: MakeGateway, client_cert: Issued) -> None:
    gw = await make_gateway(clients=[registry_client("off", name_secret(CLIENT_DN), enabled=False)])
    await assert_refused(gw, client_cert, 403, "access_denied")


async def test_unregistered_certificate_is_403(make_gateway: MakeGateway, pki: Pki) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused(gw, pki.client("nobody"), 403, "access_denied")


async def test_no_certificate_is_401(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused(gw, None, 401, "client_certificate_required")


async def test_unregistered_self_signed_certificate_is_403_naming_the_reason(
    make_gateway: MakeGateway, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    cert = pki.certificate(dn("unregistered"), self_signed=True)
    gw = await make_gateway(clients=[registry_client("self", thumbprint_secret("ab" * 20))])
    await assert_refused_naming(gw, cert, "self-signed", "self_signed", caplog)


async def test_pinned_self_signed_certificate_cannot_claim_a_registered_dn(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    # Pinned for some client, but carrying mtls.client's subject: a pin proves
    # only its own thumbprint, never a name (RFC 8705 §2.1 needs the PKI).
    forged = pki.certificate(dn("client"), self_signed=True)
    gw = await make_gateway(
        clients=[MTLS_CLIENT, registry_client("other", thumbprint_secret(forged.thumbprint))]
    )
    await assert_accepted_as(gw, forged, "other")  # its own thumbprint: yes
    # ... and never mtls.client's name, even with no thumbprint client for it.
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused(gw, forged, 403, "access_denied")
    await assert_accepted_as(gw, client_cert, "mtls.client")


async def test_certificate_that_can_sign_is_never_a_client(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    # Issued by the trusted CA and named like the client, but with keyCertSign:
    # its key could mint further certificates (RFC 5280 §4.2.1.3).
    signer = pki.certificate(dn("client"), key_cert_sign=True)
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused(gw, signer, 403, "access_denied")


async def test_ambiguous_match_is_403(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway(
        clients=[
            registry_client("first", name_secret(CLIENT_DN)),
            registry_client("second", name_secret(CLIENT_DN)),
            registry_client("third", name_secret("CN=third, OU=production, O=company")),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        await assert_refused(gw, client_cert, 403, "access_denied")
    reasons = [str(getattr(r, "reason", "")) for r in caplog.records]
    assert any("first" in reason and "second" in reason for reason in reasons), reasons
    await assert_accepted_as(gw, pki.client("third"), "third")


@pytest.mark.parametrize("shape", ["ca", "key_cert_sign"])
async def test_self_signed_certificate_that_can_issue_is_admitted_by_thumbprint_and_mints_nothing(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued, shape: str
) -> None:
    """`openssl req -x509` defaults (CA:TRUE): its key signs a leaf named like a PKI client."""
    if shape == "ca":
        own = pki.certificate(dn("self-ca"), ca=True)
    else:
        own = pki.certificate(dn("self-signer"), self_signed=True, key_cert_sign=True)
    minted = pki.certificate(dn("client"), issuer=own)
    gw = await make_gateway(
        clients=[MTLS_CLIENT, registry_client("self", thumbprint_secret(own.thumbprint))]
    )
    await assert_accepted_as(gw, own, "self")
    status, body = await call(gw, minted)
    assert status == 403, body
    assert "not issued by a trusted CA" in body["error_description"]
    await assert_accepted_as(gw, client_cert, "mtls.client")


async def test_deprecated_pinned_certs_are_read_and_never_trusted(
    make_gateway: MakeGateway, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    pin = pki.certificate(dn("pinned-ca"), ca=True)
    minted = pki.certificate(dn("client"), issuer=pin)
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        gw = await make_gateway(clients=[MTLS_CLIENT], tls={"pinned_certs": [str(pin.cert_path)]})
    warnings = [r.getMessage() for r in caplog.records if "pinned_certs[0]" in r.getMessage()]
    assert warnings and "deprecated" in warnings[0] and pin.thumbprint in warnings[0]
    await assert_refused(gw, minted, 403, "access_denied")


async def test_client_certs_required_fails_a_handshake_without_certificate(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], tls={"client_certs": "required"})
    await assert_handshake_refused(gw, None)
    await assert_accepted_as(gw, client_cert, "mtls.client")


# --- registry changes while running -------------------------------------------------


def write_registry(gw: GatewayUnderTest, clients: list[dict[str, Any]]) -> None:
    gw.registry_path.write_text(yaml.safe_dump({"clients": clients}))


async def status_on(conn: RawConnection, path: str = "/") -> int:
    return (await conn.request(get(path))).status


async def status_on_new_connection(gw: GatewayUnderTest, cert: Issued) -> int:
    conn = await RawConnection.open(gw, cert)
    try:
        return await status_on(conn)
    finally:
        await conn.close()


async def test_removed_client_is_refused_within_5s_on_new_and_existing_connections(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki
) -> None:
    staying = pki.client("staying")
    staying_client = registry_client("staying", name_secret("CN=staying, OU=production, O=company"))
    gw = await make_gateway(clients=[MTLS_CLIENT, staying_client])
    existing = await RawConnection.open(gw, client_cert)
    try:
        assert await status_on(existing) == 200
        ssl_object = existing.ssl_object
        write_registry(gw, [staying_client])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        old_conn_status = new_conn_status = 200
        while loop.time() < deadline and (old_conn_status, new_conn_status) != (403, 403):
            await asyncio.sleep(0.1)
            old_conn_status = await status_on(existing)
            new_conn_status = await status_on_new_connection(gw, client_cert)
        # The keep-alive connection holds no stale grant: both are refused.
        assert (old_conn_status, new_conn_status) == (403, 403)
        assert await status_on(existing) == 403
        assert existing.ssl_object is ssl_object  # still the same TLS connection
    finally:
        await existing.close()
    await assert_accepted_as(gw, staying, "staying")


async def test_broken_registry_file_keeps_the_running_clients(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    registry = gw.gateway.registry
    assert isinstance(registry, YamlRegistry)
    existing = await RawConnection.open(gw, client_cert)
    try:
        assert await status_on(existing) == 200
        # Unparseable YAML, then a parseable file with an invalid client.
        for broken in (
            "clients: [ {client_id: mtls.client\n",
            yaml.safe_dump({"clients": [{"client_id": "x", "secrets": [{"type": "Nope"}]}]}),
        ):
            failures = registry.reload_failures
            gw.registry_path.write_text(broken)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while registry.reload_failures == failures and loop.time() < deadline:
                await asyncio.sleep(0.1)
            assert registry.reload_failures == failures + 1, "the broken file was never read"
            assert await status_on(existing) == 200
            assert await status_on_new_connection(gw, client_cert) == 200
        # Watching goes on after a failure: a valid edit still applies.
        write_registry(gw, [])
        deadline = asyncio.get_running_loop().time() + 5
        status = 200
        while status == 200 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            status = await status_on(existing)
        assert status == 403
    finally:
        await existing.close()


async def test_certificate_expiring_during_a_keep_alive_connection_is_refused(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    """The per-connection cache does not outlive the certificate's notAfter."""
    short_lived = pki.certificate(
        dn("short-lived"), not_after=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    )
    gw = await make_gateway(
        clients=[registry_client("short", name_secret("CN=short-lived, OU=production, O=company"))]
    )
    connection = await RawConnection.open(gw, short_lived)
    try:
        first = await connection.request(get("/before"))
        assert first.status == 200
        await asyncio.sleep(
            max(
                0.0,
                short_lived.cert.not_valid_after_utc.timestamp()
                - dt.datetime.now(dt.UTC).timestamp(),
            )
            + 1.2
        )
        second = await connection.request(get("/after"))
    finally:
        await connection.close()
    assert second.status == 403, second.body
    assert "expired" in second.json()["error_description"]


def _resumable_request(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, ssl.SSLSession | None, bool]:
    """One blocking HTTP/1.1 request; returns (status, session for resumption, reused)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        # TLS 1.3 tickets arrive after the handshake: read them before asking.
        return int(data.split(b" ", 2)[1]), tls.session, bool(tls.session_reused)


async def test_resumed_session_does_not_outlive_a_removed_ca(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued, tmp_path: Path
) -> None:
    """OpenSSL skips chain verification on resumption; the gateway re-checks the trust in force."""
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_bytes(pki.ca.pem)
    gw = await make_gateway(clients=[MTLS_CLIENT], tls={"client_ca": str(ca_file)})
    context = pki.client_context(client_cert)
    status, session, _ = await asyncio.to_thread(_resumable_request, gw.port, context, None)
    assert status == 200 and session is not None
    status, session, reused = await asyncio.to_thread(_resumable_request, gw.port, context, session)
    assert status == 200 and reused, "the control: a resumed session is accepted while trusted"

    other = Pki(tmp_path / "other", ca_name="Other Root CA")
    ca_file.write_bytes(other.ca.pem)  # the client's CA is removed (replaced by another)
    tls = gw.gateway.listeners[0].tls
    for _ in range(50):
        if tls.trust.ca_certificates[0].subject != pki.ca.cert.subject:
            break
        await asyncio.sleep(0.1)
    # Each reload builds a new context with new ticket keys, so the old session
    # no longer resumes; were it to, TrustState.accepts re-checks it.
    status, _, _ = await asyncio.to_thread(_resumable_request, gw.port, context, session)
    assert status == 403
