"""Client certificates forwarded by TLS-terminating proxies: parsers, then a real gateway.

The "proxy" in the integration tests is the test client itself: from
127.0.0.1 (trusted) it sends the certificate in a header, as a load balancer
would after terminating the client's TLS; from 127.0.0.2 (a client socket
bound there) the same bytes come from an untrusted source and must be
stripped and ignored.  A real NGINX doing this is in test_nginx_forwarding.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from cryptography.x509.oid import NameOID

from gateway.trust.forwarded import (
    ForwardedCertError,
    ForwardedCertificate,
    header_values,
    parse_forwarded,
)
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    echoed_headers,
    name_secret,
    registry_client,
    thumbprint_secret,
)
from tests.pki import NOW, Issued, Pki, name

CLIENT_DN = "CN=client, OU=production, O=company"
CLIENT = registry_client("mtls.client", name_secret(CLIENT_DN))


def pem(cert: Issued) -> str:
    return cert.pem.decode("ascii")


def b64(cert: Issued) -> str:
    return base64.b64encode(cert.der).decode("ascii")


def forwarded_headers(fmt: str, cert: Issued, *chain: Issued) -> dict[str, str]:
    """The header(s) each proxy sends for ``cert`` (and its chain)."""
    if fmt == "rfc9440":
        headers = {"Client-Cert": f":{b64(cert)}:"}
        if chain:
            headers["Client-Cert-Chain"] = ", ".join(f":{b64(c)}:" for c in chain)
        return headers
    if fmt == "envoy_xfcc":
        element = f'Hash={cert.der.hex()[:16]};Cert="{quote(pem(cert))}";Subject="CN=x"'
        if chain:
            element += f';Chain="{quote("".join(pem(c) for c in (cert, *chain)))}"'
        return {"X-Forwarded-Client-Cert": element}
    if fmt == "nginx":  # $ssl_client_escaped_cert
        return {"X-SSL-Client-Cert": quote(pem(cert), safe="")}
    if fmt == "traefik":  # passTLSClientCert pem: true
        return {"X-Forwarded-Tls-Client-Cert": ",".join(b64(c) for c in (cert, *chain))}
    if fmt == "aws_alb":  # mutual TLS passthrough
        text = "".join(pem(c) for c in (cert, *chain))
        return {"X-Amzn-Mtls-Clientcert": quote(text, safe="+=/")}
    raise AssertionError(fmt)


FORMATS = ["rfc9440", "envoy_xfcc", "nginx", "traefik", "aws_alb"]


# --- parsers ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips(fmt: str, client_cert: Issued, pki: Pki) -> None:
    raw = header_values(fmt, {k: [v] for k, v in forwarded_headers(fmt, client_cert).items()})  # type: ignore[arg-type]
    assert raw is not None
    assert parse_forwarded(fmt, raw) == ForwardedCertificate(client_cert.der)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["rfc9440", "envoy_xfcc", "traefik", "aws_alb"])
def test_chain_is_carried(fmt: str, pki: Pki) -> None:
    intermediate = pki.certificate(name((NameOID.COMMON_NAME, "Chain Test Intermediate")), ca=True)
    leaf = pki.certificate(name((NameOID.COMMON_NAME, "chained")), issuer=intermediate)
    headers = forwarded_headers(fmt, leaf, intermediate)
    raw = header_values(fmt, {k: [v] for k, v in headers.items()})  # type: ignore[arg-type]
    assert raw is not None
    parsed = parse_forwarded(fmt, raw)  # type: ignore[arg-type]
    assert parsed is not None
    assert parsed.leaf == leaf.der
    assert parsed.chain == (intermediate.der,)


def test_envoy_takes_the_element_the_nearest_proxy_appended(client_cert: Issued, pki: Pki) -> None:
    forged = pki.client("forged-by-the-caller")
    value = (
        f'Cert="{quote(pem(forged))}";Subject="CN=forged",'
        f'By=spiffe://lb;Cert="{quote(pem(client_cert))}";URI=,DNS=a'
    )
    # The last element has no Cert: a misconfigured Envoy, refused.
    with pytest.raises(ForwardedCertError):
        parse_forwarded("envoy_xfcc", value)
    parsed = parse_forwarded("envoy_xfcc", value.rsplit(",DNS=a", 1)[0])
    assert parsed is not None and parsed.leaf == client_cert.der


def test_xfcc_spaces_around_separators_are_read(client_cert: Issued) -> None:
    value = f'By=spiffe://lb ; Cert="{quote(pem(client_cert))}" ;URI=spiffe://x , Hash=ab; Cert="{quote(pem(client_cert))}"'
    parsed = parse_forwarded("envoy_xfcc", value)
    assert parsed is not None and parsed.leaf == client_cert.der


def test_nginx_deprecated_folded_pem(client_cert: Issued) -> None:
    folded = pem(client_cert).strip().replace("\n", "\n\t")
    parsed = parse_forwarded("nginx", folded)
    assert parsed is not None and parsed.leaf == client_cert.der


def test_traefik_url_encoded_by_older_releases(client_cert: Issued) -> None:
    parsed = parse_forwarded("traefik", quote(b64(client_cert), safe=""))
    assert parsed is not None and parsed.leaf == client_cert.der


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("rfc9440", "MIIB...not-sf"),
        ("rfc9440", ":not base64!:"),
        ("envoy_xfcc", 'Cert="unterminated'),
        ("envoy_xfcc", "By=x;Hash=y"),
        ("nginx", "no pem here"),
        ("traefik", "%%%"),
        ("aws_alb", "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"),
    ],
)
def test_malformed_values(fmt: str, value: str) -> None:
    with pytest.raises(ForwardedCertError):
        parse_forwarded(fmt, value)  # type: ignore[arg-type]


def test_empty_value_means_no_certificate() -> None:
    assert parse_forwarded("nginx", "  ") is None


def test_repeated_single_certificate_fields_are_refused() -> None:
    with pytest.raises(ForwardedCertError):
        header_values("rfc9440", {"Client-Cert": [":AA==:", ":AA==:"]})
    with pytest.raises(ForwardedCertError):
        header_values("nginx", {"X-SSL-Client-Cert": ["a"], "ssl-client-cert": ["b"]})
    # XFCC is a list: repeated fields are joined, the last element wins.
    assert header_values("envoy_xfcc", {"X-Forwarded-Client-Cert": ["a=1", "b=2"]}) == "a=1,b=2"


# --- a real gateway behind a "proxy" ------------------------------------------------------


def forwarding(fmt: str, trusted: str = "127.0.0.1/32", **more: Any) -> dict[str, Any]:
    return {"forwarded_client_cert": {"trusted_proxies": [trusted], "format": fmt, **more}}


async def call(
    gw: GatewayUnderTest,
    headers: dict[str, str],
    *,
    source: str = "127.0.0.1",
    tls_cert: Issued | None = None,
    path: str = "/",
    method: str = "GET",
    data: Any = None,
) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=gw.ssl_context(tls_cert), local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, gw.url + path, headers=headers, data=data) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize("fmt", FORMATS)
async def test_accepted_from_a_trusted_proxy(
    make_gateway: MakeGateway, client_cert: Issued, fmt: str
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=forwarding(fmt))
    status, body = await call(gw, forwarded_headers(fmt, client_cert))
    assert status == 200, body
    seen = echoed_headers(body)
    assert seen["x-client-id"] == ["mtls.client"]
    assert seen["x-client-cert-thumbprint"] == [client_cert.thumbprint]
    # The proxy's header is not passed on: the upstream sees the gateway's own.
    for header in ("client-cert", "x-ssl-client-cert", "x-forwarded-tls-client-cert"):
        assert header not in seen
    assert "x-amzn-mtls-clientcert" not in seen
    assert seen["x-forwarded-client-cert"][0].startswith(
        f"Hash={hashlib.sha256(client_cert.der).hexdigest()}"
    )


@pytest.mark.parametrize("fmt", FORMATS)
async def test_stripped_and_refused_from_an_untrusted_source(
    make_gateway: MakeGateway, client_cert: Issued, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=forwarding(fmt))
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    status, body = await call(gw, forwarded_headers(fmt, client_cert), source="127.0.0.2")
    assert (status, body["error"]) == (401, "client_certificate_required")
    events = [r for r in caplog.records if getattr(r, "event", "") == "forwarded_cert_untrusted"]
    assert len(events) == 1 and events[0].peer == "127.0.0.2"  # type: ignore[attr-defined]


async def test_untrusted_header_logging_is_rate_limited(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Five requests with a forged header from an untrusted caller: one log line."""
    other = pki.client("direct-caller")
    gw = await make_gateway(
        clients=[
            CLIENT,
            registry_client("direct", name_secret("CN=direct-caller, OU=production, O=company")),
        ],
        listener=forwarding("rfc9440"),
        routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1", "auth": "none"}],
    )
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    for _ in range(5):
        await call(
            gw, forwarded_headers("rfc9440", client_cert), source="127.0.0.2", tls_cert=other
        )
    # Logged, but rate-limited: five requests, one line.
    events = [r for r in caplog.records if getattr(r, "event", "") == "forwarded_cert_untrusted"]
    assert len(events) == 1


async def test_direct_caller_keeps_its_tls_identity(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki
) -> None:
    other = pki.client("direct-caller")
    gw = await make_gateway(
        clients=[
            CLIENT,
            registry_client("direct", name_secret("CN=direct-caller, OU=production, O=company")),
        ],
        listener=forwarding("rfc9440"),
    )
    status, body = await call(
        gw, forwarded_headers("rfc9440", client_cert), source="127.0.0.2", tls_cert=other
    )
    assert status == 200
    seen = echoed_headers(body)
    assert seen["x-client-id"] == ["direct"]
    assert "client-cert" not in seen


async def test_unknown_ca_is_refused(make_gateway: MakeGateway, tmp_path: Any) -> None:
    stranger_pki = Pki(tmp_path / "stranger", ca_name="Stranger CA")
    same_dn = stranger_pki.client("client")  # the registered DN, from a CA nobody trusts
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("nginx"))
    status, body = await call(gw, forwarded_headers("nginx", same_dn))
    assert (status, body["error"]) == (403, "access_denied")


async def test_expired_and_ca_certificates_are_refused(make_gateway: MakeGateway, pki: Pki) -> None:
    expired = pki.client(
        "client", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
    )
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("rfc9440"))
    assert (await call(gw, forwarded_headers("rfc9440", expired)))[0] == 403
    assert (await call(gw, forwarded_headers("rfc9440", pki.ca)))[0] == 403


async def test_intermediate_from_the_chain_header(make_gateway: MakeGateway, pki: Pki) -> None:
    intermediate = pki.certificate(
        name((NameOID.COMMON_NAME, "Issuing CA 2")), ca=True, issuer=pki.ca
    )
    leaf = pki.certificate(
        name((NameOID.ORGANIZATION_NAME, "company"), (NameOID.COMMON_NAME, "via-intermediate")),
        issuer=intermediate,
    )
    gw = await make_gateway(
        clients=[registry_client("chained", name_secret("CN=via-intermediate, O=company"))],
        listener=forwarding("rfc9440"),
    )
    assert (await call(gw, forwarded_headers("rfc9440", leaf)))[0] == 403  # no path without it
    status, body = await call(gw, forwarded_headers("rfc9440", leaf, intermediate))
    assert status == 200, body
    assert echoed_headers(body)["x-client-id"] == ["chained"]


async def test_pinned_self_signed_certificate(make_gateway: MakeGateway, pki: Pki) -> None:
    self_signed = pki.certificate(name((NameOID.COMMON_NAME, "fwd-self")), self_signed=True)
    gw = await make_gateway(
        clients=[registry_client("self", thumbprint_secret(self_signed.thumbprint))],
        tls={"pinned_certs": [str(self_signed.cert_path)]},
        listener=forwarding("traefik"),
    )
    status, body = await call(gw, forwarded_headers("traefik", self_signed))
    assert status == 200, body
    assert echoed_headers(body)["x-client-id"] == ["self"]


async def test_the_proxys_own_certificate_is_never_the_client(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    """The balancer re-encrypts with its own (registered!) certificate and forwards none."""
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("rfc9440"))
    status, body = await call(gw, {}, tls_cert=client_cert)
    assert (status, body["error"]) == (401, "client_certificate_required")


async def test_required_refuses_callers_not_behind_the_proxy(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("rfc9440", required=True))
    status, _ = await call(gw, {}, source="127.0.0.2", tls_cert=client_cert)
    assert status == 401
    assert (await call(gw, forwarded_headers("rfc9440", client_cert)))[0] == 200


async def test_many_clients_over_one_proxy_connection(make_gateway: MakeGateway, pki: Pki) -> None:
    clients = [pki.client(f"multi-{i}") for i in range(3)]
    gw = await make_gateway(
        clients=[
            registry_client(f"c{i}", name_secret(f"CN=multi-{i}, OU=production, O=company"))
            for i in range(3)
        ],
        listener=forwarding("rfc9440"),
    )
    async with gw.session(None) as session:  # one keep-alive connection, as a balancer keeps
        for _ in range(2):
            for i, cert in enumerate(clients):
                async with session.get(
                    gw.url + "/", headers=forwarded_headers("rfc9440", cert)
                ) as r:
                    assert r.status == 200
                    assert echoed_headers(await r.json())["x-client-id"] == [f"c{i}"]


async def test_token_binding_uses_the_forwarded_certificate(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("rfc9440"))
    headers = forwarded_headers("rfc9440", client_cert)
    status, body = await call(
        gw,
        headers,
        path="/connect/token",
        method="POST",
        data={"grant_type": "client_credentials", "client_id": "mtls.client"},
    )
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    expected = base64.urlsafe_b64encode(hashlib.sha256(client_cert.der).digest())
    assert claims["cnf"]["x5t#S256"] == expected.rstrip(b"=").decode()


async def test_token_route_with_a_forwarded_certificate(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki, echo_upstream: Any
) -> None:
    gw = await make_gateway(
        clients=[CLIENT],
        listener=forwarding("envoy_xfcc"),
        routes=[
            {"prefix": "/api", "upstream": echo_upstream.url, "auth": "token", "scopes": ["api1"]}
        ],
    )
    headers = forwarded_headers("envoy_xfcc", client_cert)
    _, token = await call(
        gw,
        headers,
        path="/connect/token",
        method="POST",
        data={"grant_type": "client_credentials", "client_id": "mtls.client"},
    )
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    status, body = await call(gw, {**headers, **bearer}, path="/api/x")
    assert status == 200, body
    assert echoed_headers(body)["x-client-id"] == ["mtls.client"]
    # The same token with another forwarded certificate: not bound to it.
    other = pki.client("client")  # same DN, another key: another certificate
    status, body = await call(
        gw, {**forwarded_headers("envoy_xfcc", other), **bearer}, path="/api/x"
    )
    assert (status, body["error"]) == (401, "invalid_token")


async def test_trusted_proxys_x_forwarded_for_is_kept(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("rfc9440"))
    headers = {**forwarded_headers("rfc9440", client_cert), "X-Forwarded-For": "203.0.113.9"}
    _, body = await call(gw, headers)
    assert echoed_headers(body)["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    # An untrusted caller's X-Forwarded-For is its own invention: dropped.
    _, body = await call(gw, headers, source="127.0.0.2", tls_cert=client_cert)
    assert echoed_headers(body)["x-forwarded-for"] == ["127.0.0.2"]


async def test_certificate_without_client_auth_usage_is_refused(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    """OpenSSL's sslclient purpose: an extendedKeyUsage without clientAuth is no client."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    server_only = pki.client("client", eku=ExtendedKeyUsageOID.SERVER_AUTH)
    gw = await make_gateway(clients=[CLIENT], listener=forwarding("rfc9440"))
    status, body = await call(gw, forwarded_headers("rfc9440", server_only))
    assert (status, body["error"]) == (403, "access_denied")
