"""Outbound h2c → h2: an unmodified gRPC client in outbound mode (issue 17).

grpcio client ──h2c──▶ gateway A (outbound listener) ──h2 + mTLS + bound token──▶
    gateway B (inbound, `auth: token` gRPC route) ──h2c + identity metadata──▶ grpcio server
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import pytest

from tests.conftest import MakeGateway, free_port, name_secret, registry_client
from tests.http2.grpc_service import OPTIONS, SERVICE, GrpcUpstream, start_grpc_upstream
from tests.outbound.conftest import x5t_s256
from tests.outbound.test_integration import _claims
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"


@pytest.fixture
def grpc_h2c() -> Iterator[GrpcUpstream]:
    upstream = start_grpc_upstream()
    yield upstream
    upstream.stop()


async def _destination(make_gateway: MakeGateway, pki: Pki, grpc_port: int) -> str:
    """Gateway B: a token-protected gRPC route to the grpcio server (h2c)."""
    port = free_port()
    base = f"https://localhost:{port}"
    await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN), allowed_scopes=["api1"])],
        routes=[
            {
                "prefix": f"/{SERVICE}",
                "upstream": f"http://127.0.0.1:{grpc_port}",
                "upstream_protocol": "h2c",
                "auth": "token",
                "scopes": ["api1"],
            }
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


async def test_a_grpc_client_in_outbound_mode_reaches_a_token_route(
    make_gateway: MakeGateway, pki: Pki, grpc_h2c: GrpcUpstream, client_cert: Issued
) -> None:
    destination = await _destination(make_gateway, pki, grpc_h2c.port)
    caller = await make_gateway(
        clients=[registry_client("someone", name_secret("CN=someone, O=company"))],
        extra={
            "outbound": [
                {
                    "bind": "127.0.0.1:0",
                    "destination": destination,
                    "tls": {
                        "cert": str(client_cert.cert_path),
                        "key": str(client_cert.key_path),
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
    port = caller.running.outbound_addresses[0][1]

    def calls() -> tuple[bytes, list[bytes]]:
        # Plain h2c to the local listener, as an app's gRPC client would.
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as ch:
            unary = bytes(ch.unary_unary(f"/{SERVICE}/Unary")(b"out", timeout=10))
            streamed = list(ch.unary_stream(f"/{SERVICE}/ServerStream")(b"3", timeout=10))
            return unary, streamed

    unary, streamed = await asyncio.to_thread(calls)
    assert unary == b"echo:out"
    assert streamed == [b"part 0", b"part 1", b"part 2"]
    first = dict(grpc_h2c.seen.metadata[0])
    assert first["x-client-id"] == "mtls.client"  # B verified A's certificate and token
    assert first["x-client-cert-sha256"] == x5t_s256(client_cert.der)
    claims = _claims(str(first["authorization"]).partition(" ")[2])
    assert claims["cnf"]["x5t#S256"] == x5t_s256(client_cert.der)
    assert len(set(grpc_h2c.seen.peers)) == 1  # B relayed both calls on one connection
    (source,) = caller.gateway.outbound[0].token_sources.values()
    assert source.requests_made == 1, "one token for both calls"


async def test_http1_still_works_on_the_outbound_listener(
    make_gateway: MakeGateway, pki: Pki, grpc_h2c: GrpcUpstream, client_cert: Issued
) -> None:
    import aiohttp

    destination = await _destination(make_gateway, pki, grpc_h2c.port)
    caller = await make_gateway(
        clients=[registry_client("someone", name_secret("CN=someone, O=company"))],
        extra={
            "outbound": [
                {
                    "bind": "127.0.0.1:0",
                    "destination": destination,
                    "tls": {
                        "cert": str(client_cert.cert_path),
                        "key": str(client_cert.key_path),
                        "ca": str(pki.ca.cert_path),
                    },
                }
            ]
        },
    )
    port = caller.running.outbound_addresses[0][1]
    async with (
        aiohttp.ClientSession() as app,
        app.get(f"http://127.0.0.1:{port}/nothing-here") as response,
    ):
        # HTTP/1.1 through to B, which has no route there.
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
