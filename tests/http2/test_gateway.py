"""Issue 17 end to end: grpcio client → the real gateway (h2 + mTLS) → grpcio server (h2c).

The gateway is started from a config file as `serve` would (tests/conftest.py
make_gateway); every identity rule of HTTP/1.1 applies per stream.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import pytest

from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    free_port,
    name_secret,
    registry_client,
)
from tests.http2.grpc_service import SERVICE, GrpcUpstream, channel, start_grpc_upstream
from tests.oauth.test_resource import get_token
from tests.pki import Issued, Pki

CLIENTS = [
    registry_client("mtls.client", name_secret("CN=client, OU=production, O=company")),
    registry_client("other.client", name_secret("CN=other, OU=production, O=company")),
]


@pytest.fixture
def grpc_h2c() -> Iterator[GrpcUpstream]:
    upstream = start_grpc_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def other_cert(pki: Pki) -> Issued:
    return pki.client("other", label="other")


def _route(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "prefix": f"/{SERVICE}",
        "upstream": f"http://127.0.0.1:{port}",
        "upstream_protocol": "h2c",
        "auth": "client",
        **extra,
    }


async def _gateway(make_gateway: MakeGateway, *routes: dict[str, Any]) -> GatewayUnderTest:
    return await make_gateway(clients=CLIENTS, routes=list(routes))


def _unary(port: int, pki: Pki, cert: Issued, message: bytes, **kwargs: Any) -> bytes:
    with channel(port, pki, cert) as ch:
        return bytes(ch.unary_unary(f"/{SERVICE}/Unary")(message, timeout=10, **kwargs))


def _refusal(port: int, pki: Pki, cert: Issued, **kwargs: Any) -> grpc.RpcError:
    with channel(port, pki, cert) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=10, **kwargs)
    return caught.value


async def test_unary_carries_the_identity_and_never_a_spoofed_copy(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, _route(grpc_h2c.port))
    spoofed = (("x-client-id", "admin"), ("x-client-cert-thumbprint", "00" * 20))
    reply = await asyncio.to_thread(_unary, gw.port, pki, client_cert, b"hello", metadata=spoofed)
    assert reply == b"echo:hello"
    (metadata,) = grpc_h2c.seen.metadata
    assert [v for k, v in metadata if k == "x-client-id"] == ["mtls.client"]
    assert [v for k, v in metadata if k == "x-client-cert-thumbprint"] == [client_cert.thumbprint]
    assert ("x-forwarded-proto", "https") in metadata


async def test_server_streaming_and_bidirectional_streaming(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, _route(grpc_h2c.port))

    def calls() -> tuple[list[bytes], list[bytes]]:
        with channel(gw.port, pki, client_cert) as ch:
            parts = list(ch.unary_stream(f"/{SERVICE}/ServerStream")(b"20", timeout=10))
            outbox: queue.Queue[bytes | None] = queue.Queue()
            outbox.put(b"one")

            def requests() -> Iterator[bytes]:
                while (message := outbox.get(timeout=5)) is not None:
                    yield message

            echoed: list[bytes] = []
            # Each message goes up only once the previous answer came down.
            for answer in ch.stream_stream(f"/{SERVICE}/Bidi")(requests(), timeout=10):
                echoed.append(answer)
                outbox.put({1: b"two", 2: b"three"}.get(len(echoed)))
            return parts, echoed

    parts, echoed = await asyncio.to_thread(calls)
    assert parts == [b"part %d" % i for i in range(20)]
    assert echoed == [b"ONE", b"TWO", b"THREE"]


async def test_a_token_route_takes_a_bound_token_and_refuses_it_on_another_certificate(
    make_gateway: MakeGateway,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
    other_cert: Issued,
) -> None:
    gw = await _gateway(make_gateway, _route(grpc_h2c.port, auth="token"))
    token = await get_token(gw, client_cert)
    metadata = (("authorization", f"Bearer {token}"),)
    reply = await asyncio.to_thread(_unary, gw.port, pki, client_cert, b"bound", metadata=metadata)
    assert reply == b"echo:bound"
    error = await asyncio.to_thread(_refusal, gw.port, pki, other_cert, metadata=metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("invalid_token: ")
    missing = await asyncio.to_thread(_refusal, gw.port, pki, client_cert)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unregistered_certificate_is_permission_denied(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki
) -> None:
    gw = await _gateway(make_gateway, _route(grpc_h2c.port))
    stranger = pki.client("stranger")
    error = await asyncio.to_thread(_refusal, gw.port, pki, stranger)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("access_denied: ")
    assert grpc_h2c.seen.metadata == []  # nothing reached the service


async def test_the_upstream_down_is_unavailable(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, _route(free_port()))
    error = await asyncio.to_thread(_refusal, gw.port, pki, client_cert)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "bad_gateway: the upstream is unreachable"


async def test_an_unrouted_grpc_method_is_unimplemented(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, {**_route(grpc_h2c.port), "prefix": "/other.Service"})
    error = await asyncio.to_thread(_refusal, gw.port, pki, client_cert)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def _curl_http2(url: str, pki: Pki, cert: Issued, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--http2",
            "--cacert",
            str(pki.ca.cert_path),
            "--cert",
            str(cert.cert_path),
            "--key",
            str(cert.key_path),
            "--write-out",
            "\\n%{http_version} %{response_code}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


async def test_curl_http2_against_an_http1_upstream(
    make_gateway: MakeGateway, echo_upstream: Upstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=CLIENTS, routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": "client"}]
    )
    done = await asyncio.to_thread(
        _curl_http2,
        gw.url + "/echo/path?q=1",
        pki,
        client_cert,
        "-H",
        "X-Client-Id: spoofed",
        "--data-binary",
        "posted body",
    )
    assert done.returncode == 0, done.stderr
    body, _, status_line = done.stdout.rpartition("\n")
    assert status_line == "2 200"  # HTTP/2 to the caller
    echoed = json.loads(body)
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert headers["x-client-id"] == "mtls.client"
    assert headers["host"] == f"127.0.0.1:{echo_upstream.port}"
    assert echoed["method"] == "POST"


async def test_curl_http2_gets_json_refusals(
    make_gateway: MakeGateway, echo_upstream: Upstream, pki: Pki
) -> None:
    gw = await make_gateway(
        clients=CLIENTS, routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": "client"}]
    )
    done = await asyncio.to_thread(_curl_http2, gw.url + "/", pki, pki.client("unknown"))
    body, _, status_line = done.stdout.rpartition("\n")
    assert status_line == "2 403"
    assert json.loads(body)["error"] == "access_denied"


async def test_shutdown_sends_goaway_and_lets_an_admitted_call_finish(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, _route(grpc_h2c.port))
    call = asyncio.create_task(asyncio.to_thread(_unary, gw.port, pki, client_cert, b"sleep:1"))
    async with asyncio.timeout(5):
        while not grpc_h2c.seen.metadata:  # the call reached the service
            await asyncio.sleep(0.02)
    started = asyncio.get_running_loop().time()
    await gw.running.stop(grace=10)
    assert await call == b"echo:sleep:1"
    assert asyncio.get_running_loop().time() - started < 5  # not held to the grace


async def test_an_http2_connection_over_max_connections_gets_goaway_before_any_stream(
    make_gateway: MakeGateway, echo_upstream: Upstream, pki: Pki, client_cert: Issued
) -> None:
    from tests.http2.peer import RawH2

    gw = await make_gateway(
        clients=CLIENTS,
        routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": "client"}],
        extra={"limits": {"max_connections": 1}},
    )
    first = await RawH2.connect(gw.port, pki.client_context(client_cert))
    first.start()
    assert (await first.answer(first.request("/held"))).status == 200
    second = await RawH2.connect(gw.port, pki.client_context(client_cert))
    second.start()
    second.request("/refused")
    await second.until(lambda: second.terminated is not None)
    assert second.terminated is not None
    assert second.terminated.last_stream_id == 0  # nothing processed: safe to retry
    assert second.terminated.additional_data == b"too many open connections"
    await first.close()
    await second.close()


async def test_metrics_and_the_access_log_carry_the_protocol_and_the_grpc_status(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki, client_cert: Issued
) -> None:
    import io

    gw = await _gateway(make_gateway, _route(grpc_h2c.port))
    assert gw.gateway.access_log is not None
    gw.gateway.access_log.stream = access = io.BytesIO()
    gw.gateway.access_log.format = "json"
    assert await asyncio.to_thread(_unary, gw.port, pki, client_cert, b"ok") == b"echo:ok"
    failed = await asyncio.to_thread(_unary_failing, gw.port, pki, client_cert)
    assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
    refused = await asyncio.to_thread(_refusal, gw.port, pki, pki.client("nobody"))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED

    metrics = gw.gateway.metrics.render().decode()
    route = f"/{SERVICE}"
    for status, count in (("0", 1), ("9", 1), ("7", 1)):
        line = (
            f'mtls_gateway_http2_requests_total{{grpc_status="{status}",listener="0",'
            f'route="{route}"}} {count:.1f}'
        )
        assert line in metrics
    gw.gateway.access_log.flush()
    logged = [json.loads(line) for line in access.getvalue().decode().splitlines()]
    assert [(e["protocol"], e["grpc_status"], e["status"]) for e in logged] == [
        ("HTTP/2", 0, 200),
        ("HTTP/2", 9, 200),
        ("HTTP/2", 7, 200),
    ]


def _unary_failing(port: int, pki: Pki, cert: Issued) -> grpc.RpcError:
    with channel(port, pki, cert) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(f"/{SERVICE}/Unary")(b"fail", timeout=10)
    return caught.value


async def test_an_http1_caller_reaches_an_h2c_upstream(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    from gateway.http2.server import Http2ServerProtocol
    from gateway.pipeline.messages import Request, Response

    seen: list[Request] = []

    async def upstream(request: Request) -> Response:
        seen.append(request)
        return Response(200, [("content-type", "text/plain")], b"via h2c: " + await request.read())

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Http2ServerProtocol(upstream, scheme="http"), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    gw = await make_gateway(
        clients=CLIENTS,
        routes=[
            {
                "prefix": "/",
                "upstream": f"http://127.0.0.1:{port}",
                "upstream_protocol": "h2c",
                "auth": "client",
            }
        ],
    )
    async with (
        gw.session(client_cert) as session,
        session.post(
            gw.url + "/items?x=1", data=b"payload", headers={"X-Client-Id": "spoofed"}
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == b"via h2c: payload"
    (request,) = seen
    assert request.protocol == "HTTP/2" and request.raw_path == "/items?x=1"
    assert request.headers.getall("X-Client-Id") == ["mtls.client"]
    assert request.host == f"127.0.0.1:{port}"
    server.close()


async def test_the_route_timeout_is_deadline_exceeded(
    make_gateway: MakeGateway, grpc_h2c: GrpcUpstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, _route(grpc_h2c.port, timeout=0.5))

    def call() -> grpc.RpcError:
        with channel(gw.port, pki, client_cert) as ch, pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(f"/{SERVICE}/Unary")(b"sleep:2", timeout=10)
        return caught.value

    error = await asyncio.to_thread(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "gateway_timeout: the upstream did not answer in time"
    assert await asyncio.to_thread(
        grpc_h2c.seen.cancelled.wait, 5
    )  # the call was cancelled upstream
