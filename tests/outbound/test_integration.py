"""The whole chain, with no stand-ins but the app and the echo upstream:

  app ──HTTP──▶ gateway A (outbound listener) ──mTLS + bound token──▶
      gateway B (inbound, `auth: token` route) ──HTTP + identity headers──▶ echo

A finds B's token endpoint through discovery (``mtls_endpoint_aliases``),
obtains a token with client_credentials over mTLS, and attaches it; B checks
that the token is its own, unexpired, scoped and bound to the certificate on
the connection, then forwards the caller's identity.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp

from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    echoed_headers,
    free_port,
    name_secret,
    registry_client,
)
from tests.outbound.conftest import x5t_s256
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


async def _destination(make_gateway: MakeGateway, pki: Pki, echo_upstream: Upstream) -> str:
    """Gateway B on a known port, so that its issuer is the URL discovery is read from."""
    port = free_port()
    base = f"https://localhost:{port}"
    await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN), allowed_scopes=["api1"])],
        routes=[
            {"prefix": "/", "upstream": echo_upstream.url, "auth": "token", "scopes": ["api1"]}
        ],
        extra={
            "issuer": base,
            "listeners": [
                {
                    "bind": f"127.0.0.1:{port}",
                    "public_url": base,
                    "tls": {
                        "cert": str(pki.server.cert_path),
                        "key": str(pki.server.key_path),
                        "client_ca": str(pki.ca.cert_path),
                    },
                }
            ],
        },
    )
    return base


async def _caller(
    make_gateway: MakeGateway, pki: Pki, destination: str, workload: Issued
) -> GatewayUnderTest:
    """Gateway A: both directions in one config file; its outbound listener calls B."""
    return await make_gateway(
        clients=[registry_client("someone", name_secret("CN=someone, O=company"))],
        extra={
            "outbound": [
                {
                    "bind": "127.0.0.1:0",
                    "destination": destination,
                    "tls": {
                        "cert": str(workload.cert_path),
                        "key": str(workload.key_path),
                        "ca": str(pki.ca.cert_path),
                    },
                    "token": {
                        "issuer": destination,
                        "client_id": "mtls.client",
                        "scopes": ["api1"],
                    },
                }
            ]
        },
    )


async def test_app_reaches_a_token_route_through_the_outbound_listener(
    make_gateway: MakeGateway, pki: Pki, echo_upstream: Upstream, client_cert: Issued
) -> None:
    destination = await _destination(make_gateway, pki, echo_upstream)
    caller = await _caller(make_gateway, pki, destination, client_cert)
    outbound = f"http://127.0.0.1:{caller.running.outbound_addresses[0][1]}"
    assert caller.gateway.access_log is not None
    caller.gateway.access_log.stream = access = io.BytesIO()
    caller.gateway.access_log.format = "json"

    async with aiohttp.ClientSession() as app:
        for _ in range(2):
            async with app.post(outbound + "/orders?id=7", json={"n": 1}) as response:
                assert response.status == 200, await response.text()
                raw = await response.read()
                body = json.loads(raw)
    assert body["method"] == "POST" and body["path"] == "/orders?id=7"
    headers = echoed_headers(body)

    # The upstream sees the calling workload's identity, as B verified it.
    assert headers["x-client-id"] == ["mtls.client"]
    assert headers["x-client-cert-subject"] == [CLIENT_DN]
    assert headers["x-client-cert-sha256"] == [x5t_s256(client_cert.der)]
    assert headers["x-client-cert-thumbprint"] == [client_cert.thumbprint]

    # The token A attached is B's, for this client and scope, and bound to
    # the certificate A presented (RFC 8705 §3.1).
    (authorization,) = headers["authorization"]
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    claims = _claims(token)
    assert claims["iss"] == destination
    assert claims["client_id"] == "mtls.client" and claims["scope"] == "api1"
    assert claims["cnf"]["x5t#S256"] == x5t_s256(client_cert.der)

    (source,) = caller.gateway.outbound[0].token_sources.values()
    assert source.requests_made == 1, "one token for both requests"

    # The outbound calls are counted like inbound ones.
    async with aiohttp.ClientSession() as admin, admin.get(caller.admin_url + "/metrics") as r:
        text = await r.text()
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("mtls_gateway_requests_total{")
        and 'listener="outbound[0]"' in line
        and 'status="200"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 2

    # ... and logged like them: the destination's status and the body bytes relayed.
    caller.gateway.access_log.flush()
    logged = [json.loads(line) for line in access.getvalue().decode().splitlines()]
    assert [e["listener"] for e in logged] == ["outbound[0]", "outbound[0]"]
    assert all(e["upstream_status"] == 200 and e["query"] == "id=7" for e in logged)
    assert logged[-1]["bytes"] == len(raw)


async def test_an_unregistered_workload_gets_502_naming_the_token_error(
    make_gateway: MakeGateway, pki: Pki, echo_upstream: Upstream
) -> None:
    destination = await _destination(make_gateway, pki, echo_upstream)
    stranger = pki.client("stranger")
    caller = await _caller(make_gateway, pki, destination, stranger)
    outbound = f"http://127.0.0.1:{caller.running.outbound_addresses[0][1]}"

    async with aiohttp.ClientSession() as app, app.get(outbound + "/hello") as response:
        assert response.status == 502
        body = await response.json()
    assert body["error"] == "token_unavailable"
    assert body["error_description"].startswith(
        f"invalid_client from {destination}/connect/mtls/token"
    )
