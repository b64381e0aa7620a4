"""Identity spoofing: no caller-sent copy of a managed header reaches the upstream.

``tests/test_proxy.py`` covers the spec's headers through an HTTP client and a
few raw repeats.  Here every managed name (the spec's, the forwarding ones and
those load balancers use for forwarded certificates) is sent in every case and
``_`` spelling, repeated, folded, as a chunked trailer, on every route kind
(``client``, ``token``, ``none``) and on a WebSocket upgrade.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import MakeGateway, Upstream, echoed_headers
from tests.pki import Issued
from tests.security.conftest import (
    CLIENT_DN,
    MTLS_CLIENT,
    RecordingUpstream,
    recording_gateway,
)
from tests.test_proxy import RawConnection

SPOOF = "spoofed-by-caller"

# Every header an upstream might take as the caller's identity or address.
MANAGED = (
    "X-Client-Id",
    "X-Client-Cert-Subject",
    "X-Client-Cert-Thumbprint",
    "X-Client-Cert-Sha256",
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Forwarded",
    "X-Real-IP",
    "ssl-client-cert",
    "X-SSL-Client-Cert",
    "X-Forwarded-Tls-Client-Cert",
    "X-Forwarded-Tls-Client-Cert-Info",
    "X-Amzn-Mtls-Clientcert",
    "X-Amzn-Mtls-Clientcert-Leaf",
    "X-Amzn-Mtls-Clientcert-Issuer",
    "X-Amzn-Mtls-Clientcert-Subject",
    "X-Amzn-Mtls-Clientcert-Validity",
    "X-Amzn-Mtls-Clientcert-Serial-Number",
)
MANAGED_KEYS = frozenset(name.lower() for name in MANAGED)


def spellings(name: str) -> list[str]:
    """The name as written, lower, upper, with "_" for "-", and mixed case and separators."""
    mixed = "".join(ch.upper() if i % 2 else ch.lower() for i, ch in enumerate(name))
    alternating = "".join(
        ("_" if i % 2 else "-") if ch == "-" else ch for i, ch in enumerate(mixed)
    )
    return [name, name.lower(), name.upper(), name.replace("-", "_"), alternating]


def spoofed_fields() -> list[tuple[str, str]]:
    fields = []
    for name in MANAGED:
        for spelling in spellings(name):
            fields.append((spelling, SPOOF))
        fields.append((name, SPOOF))  # the exact name a second time: a repeat
    return fields


def key(name: str) -> str:
    return name.lower().replace("_", "-")


def assert_only_the_gateways_identity(
    headers: list[tuple[str, str]], *, client_id: str | None, port: int
) -> None:
    seen: dict[str, list[str]] = {}
    for name, value in headers:
        assert SPOOF not in value, (name, value)
        if key(name) in MANAGED_KEYS:
            assert "_" not in name, name  # never a caller's spelling
            seen.setdefault(key(name), []).append(value)
    # Exactly one of each the gateway sets itself, and nothing else managed.
    expected = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    if client_id is not None:
        expected |= {
            "x-client-id",
            "x-client-cert-subject",
            "x-client-cert-thumbprint",
            "x-client-cert-sha256",
            "x-forwarded-client-cert",
        }
    assert set(seen) == expected, sorted(seen)
    assert all(len(values) == 1 for values in seen.values()), seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == [f"localhost:{port}"]
    if client_id is not None:
        assert seen["x-client-id"] == [client_id]
        assert seen["x-client-cert-subject"] == [CLIENT_DN]


def raw_request(path: str, port: int, fields: list[tuple[str, str]], *extra: str) -> str:
    lines = [f"GET {path} HTTP/1.1", f"Host: localhost:{port}"]
    lines += [f"{name}: {value}" for name, value in fields]
    lines += list(extra)
    return "\r\n".join(lines) + "\r\n\r\n"


async def bearer_token(gw: Any, cert: Issued) -> str:
    form = {"grant_type": "client_credentials", "client_id": "mtls.client"}
    async with gw.session(cert) as session, session.post(gw.url + "/connect/token", data=form) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["access_token"]
        return token


@pytest.mark.parametrize("auth", ["client", "token", "none"])
async def test_every_spelling_and_repeat_of_every_managed_header_is_removed(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued, auth: str
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": auth}],
        extra={"limits": {"max_headers": 200}},
    )
    fields = spoofed_fields()
    assert len(fields) == len(MANAGED) * 6
    extra = []
    if auth == "token":
        extra.append(f"Authorization: Bearer {await bearer_token(gw, client_cert)}")
    conn = await RawConnection.open(gw, None if auth == "none" else client_cert)
    try:
        response = await conn.request(raw_request("/spoof", gw.port, fields, *extra))
    finally:
        await conn.close()
    assert response.status == 200, response.body
    body = response.json()
    assert_only_the_gateways_identity(
        [(k, v) for k, v in body["headers"]],
        client_id=None if auth == "none" else "mtls.client",
        port=gw.port,
    )


@pytest.mark.parametrize(
    "fold",
    [
        # A folded continuation of a managed header...
        "X-Client-Id: mtls.client\r\n " + SPOOF,
        # ...and a managed header hidden in another field's continuation line.
        "X-Innocent: a\r\n X-Client-Id: " + SPOOF,
        "X-Innocent: a\r\n\tX_Forwarded_For: " + SPOOF,
    ],
)
async def test_obs_folded_identity_headers_are_refused(
    make_gateway: MakeGateway,
    recording_upstream: RecordingUpstream,
    client_cert: Issued,
    fold: str,
) -> None:
    # RFC 9112 §5.2: a server must reject obs-fold or unfold it; unfolding
    # could let a downstream parser see a header the gateway did not.
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, client_cert)
    try:
        response = await conn.request(
            f"GET /private/fold HTTP/1.1\r\nHost: localhost\r\n{fold}\r\n\r\n"
        )
    finally:
        await conn.close()
    assert response.status == 400
    assert recording_upstream.requests == []


async def test_identity_headers_in_chunked_trailers_never_reach_the_upstream(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, client_cert: Issued
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    # Managed names, and one the gateway has no reason to strip: were trailers
    # relayed or merged into the head, that one would show.
    fields = [*spoofed_fields()[:40], ("X-Probe-Trailer", SPOOF)]
    trailers = "".join(f"{name}: {value}\r\n" for name, value in fields)
    conn = await RawConnection.open(gw, client_cert)
    try:
        response = await conn.request(
            "POST /private/trailers HTTP/1.1\r\nHost: localhost\r\n"
            "Transfer-Encoding: chunked\r\nTrailer: X-Client-Id\r\nTE: trailers\r\n\r\n"
            f"5\r\nhello\r\n0\r\n{trailers}\r\n"
        )
    finally:
        await conn.close()
    assert response.status == 200, response.body
    (request,) = recording_upstream.requests
    assert request.body == b"hello"
    # Trailers are not relayed at all, neither as trailers nor merged into
    # the head (RFC 9110 §6.5.1 forbids that merge for unknown fields).
    assert request.trailers == []
    assert SPOOF.encode() not in recording_upstream.all_bytes()
    assert request.values("X-Client-Id") == ["mtls.client"]
    assert "trailer" not in request.header_names()


@pytest.mark.parametrize("auth", ["client", "none"])
async def test_websocket_upgrade_carries_no_spoofed_identity(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued, auth: str
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": auth}],
        extra={"limits": {"max_headers": 200}},
    )
    cert = client_cert if auth == "client" else None
    async with (
        gw.session(cert) as session,
        session.ws_connect(gw.url + "/ws", headers=spoofed_fields(), protocols=("echo",)) as ws,
    ):
        first = await ws.receive_json(timeout=5)
        # Frames after the upgrade are data, relayed as sent; a "header" in
        # one is the application's business, not an identity.
        await ws.send_str(f"X-Client-Id: {SPOOF}")
        assert await ws.receive_str(timeout=5) == f"X-Client-Id: {SPOOF}"
    assert_only_the_gateways_identity(
        [(k, v) for k, v in first["headers"]],
        client_id="mtls.client" if auth == "client" else None,
        port=gw.port,
    )
    assert echoed_headers(first)["upgrade"] == ["websocket"]
