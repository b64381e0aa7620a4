"""The outbound forwarder: routing, headers, the one retry after invalid_token, faults."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web

from gateway.outbound.config import OutboundRouteConfig
from tests.conftest import free_port
from tests.outbound.conftest import (
    Partner,
    StartOutbound,
    outbound_config,
    server_context,
    start_tls_app,
    token_settings,
)
from tests.pki import Issued, Pki


async def _call(method: str, url: str | yarl.URL, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, **kwargs) as response,
    ):
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, dict(response.headers), body


def _headers(body: dict[str, Any]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for key, value in body["headers"]:
        result.setdefault(key.lower(), []).append(value)
    return result


@pytest.fixture
async def with_token(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> str:
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
            timeout=2.0,
        )
    )
    return running.url


# ------------------------------------------------------------------ 401 invalid_token


async def test_revoked_token_is_refreshed_once_and_the_request_retried_once(
    with_token: str, partner: Partner
) -> None:
    status, _, body = await _call("GET", with_token + "/api/protected/a")
    assert status == 200
    first = body["authorization"]
    partner.revoked.add(first[0].removeprefix("Bearer "))
    calls = partner.api_calls

    status, _, body = await _call("PUT", with_token + "/api/protected/a", data=b"small body")
    assert status == 200, body
    assert body["authorization"] != first
    assert body["body_bytes"] == len(b"small body"), "the buffered body was sent again"
    assert partner.tokens_issued == 2, "one refresh"
    assert partner.api_calls == calls + 2, "one retry"


async def test_many_refusals_of_one_token_make_one_refresh(
    with_token: str, partner: Partner
) -> None:
    _, _, body = await _call("GET", with_token + "/api/protected/a")
    partner.revoked.add(body["authorization"][0].removeprefix("Bearer "))
    partner.delay = 0.1
    results = await asyncio.gather(
        *(_call("GET", with_token + "/api/protected/a") for _ in range(20))
    )
    assert all(status == 200 for status, _, _ in results)
    assert partner.tokens_issued == 2


async def test_a_second_refusal_reaches_the_app(with_token: str, partner: Partner) -> None:
    partner.reject_all = True
    status, headers, body = await _call("GET", with_token + "/api/protected/a")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body == {"error": "invalid_token"}
    assert partner.api_calls == 2, "retried once, not in a loop"
    assert partner.tokens_issued == 2


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_requests_are_not_retried_but_the_token_is_dropped(
    with_token: str, partner: Partner, method: str
) -> None:
    status, _, body = await _call("GET", with_token + "/api/protected/a")
    partner.revoked.add(body["authorization"][0].removeprefix("Bearer "))
    status, _, _ = await _call(method, with_token + "/api/protected/a", data=b"order")
    assert status == 401
    assert partner.tokens_issued == 1
    status, _, _ = await _call("GET", with_token + "/api/protected/a")
    assert status == 200
    assert partner.tokens_issued == 2, "the next request got a fresh token"


async def test_large_idempotent_bodies_stream_and_are_not_retried(
    with_token: str, partner: Partner
) -> None:
    status, _, body = await _call("GET", with_token + "/api/protected/a")
    partner.revoked.add(body["authorization"][0].removeprefix("Bearer "))
    calls = partner.api_calls
    status, _, _ = await _call("PUT", with_token + "/api/protected/a", data=os.urandom(200_000))
    assert status == 401
    assert partner.api_calls == calls + 1


async def test_plain_401_without_invalid_token_is_relayed_untouched(
    pki: Pki, client_cert: Issued, start_outbound: StartOutbound
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "nope"}, status=401, headers={"WWW-Authenticate": 'Basic realm="x"'}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner, port = await start_tls_app(app, server_context(pki))
    try:
        running = await start_outbound(
            outbound_config(
                destination=f"https://localhost:{port}", cert=client_cert, ca=pki.ca.cert_path
            )
        )
        status, headers, body = await _call("GET", running.url + "/x")
        assert (status, body) == (401, {"error": "nope"})
        assert headers["WWW-Authenticate"] == 'Basic realm="x"'
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------- headers


async def test_the_apps_authorization_is_replaced_and_hop_by_hop_headers_dropped(
    with_token: str, partner: Partner
) -> None:
    status, _, body = await _call(
        "GET",
        yarl.URL(with_token + "/api/x?a=1&b=%2F", encoded=True),
        headers={
            "Authorization": "Basic YXBwOnNlY3JldA==",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "private",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eA==",
            "X-App": "kept",
            "Host": "whatever.local",
        },
    )
    assert status == 200
    headers = _headers(body)
    assert body["path"] == "/api/x?a=1&b=%2F"
    assert len(headers["authorization"]) == 1
    assert headers["authorization"][0].startswith("Bearer tok-")
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization"):
        assert hop not in headers, hop
    assert headers["x-app"] == ["kept"]
    assert headers["host"] == [partner.url.removeprefix("https://")]


async def test_without_token_settings_the_apps_authorization_passes(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path)
    )
    status, _, body = await _call(
        "GET", running.url + "/api/x", headers={"Authorization": "ApiKey k"}
    )
    assert status == 200
    assert body["authorization"] == ["ApiKey k"]
    assert partner.tokens_issued == 0


async def test_large_bodies_stream_through_intact(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path)
    )
    data = os.urandom(3 * 1024 * 1024 + 7)

    async def chunks() -> Any:
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    status, _, body = await _call("POST", running.url + "/api/upload", data=chunks())
    assert status == 200 and body["body_bytes"] == len(data)
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------- routing


async def test_routes_by_prefix_and_host(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    routes = [
        OutboundRouteConfig("/", None, partner.url + "/api/default", None),
        OutboundRouteConfig("/orders", None, partner.url + "/api/orders", None, strip_prefix=True),
        OutboundRouteConfig(
            "/orders", "shop.example", partner.url + "/api/shop", token_settings(partner)
        ),
        OutboundRouteConfig("/only", "other.example", partner.url + "/api/other", None),
    ]
    running = await start_outbound(
        outbound_config(routes=routes, cert=client_cert, ca=pki.ca.cert_path)
    )
    cases = [
        ("/x", None, "/api/default/x", False),
        ("/orders/1", None, "/api/orders/1", False),
        ("/ordersx", None, "/api/default/ordersx", False),
        ("/orders/1", "SHOP.example:15001", "/api/shop/orders/1", True),
        ("/a/../orders/2", "shop.example", "/api/shop/orders/2", True),
    ]
    for path, host, expected, with_token in cases:
        headers = {"Host": host} if host else {}
        status, _, body = await _call("GET", running.url + path, headers=headers)
        assert status == 200, (path, body)
        assert body["path"] == expected, path
        assert bool(body["authorization"]) is with_token, path
    status, _, body = await _call("GET", running.url + "/only")
    assert status == 200 and body["path"] == "/api/default/only"


async def test_no_route_is_404_json(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    routes = [OutboundRouteConfig("/api", None, partner.url, None)]
    running = await start_outbound(
        outbound_config(routes=routes, cert=client_cert, ca=pki.ca.cert_path)
    )
    status, _, body = await _call("GET", running.url + "/elsewhere")
    assert status == 404 and body["error"] == "not_found"


# -------------------------------------------------------------------------- faults


async def test_unreachable_destination_is_502_json(
    pki: Pki, client_cert: Issued, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(
            destination=f"https://localhost:{free_port()}", cert=client_cert, ca=pki.ca.cert_path
        )
    )
    status, _, body = await _call("GET", running.url + "/x")
    assert status == 502
    assert body == {"error": "bad_gateway", "error_description": "the destination is unreachable"}


async def test_slow_destination_is_504_json(
    pki: Pki, client_cert: Issued, start_outbound: StartOutbound
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner, port = await start_tls_app(app, server_context(pki))
    try:
        running = await start_outbound(
            outbound_config(
                destination=f"https://localhost:{port}",
                cert=client_cert,
                ca=pki.ca.cert_path,
                timeout=0.5,
            )
        )
        status, _, body = await _call("GET", running.url + "/x")
        assert status == 504 and body["error"] == "gateway_timeout"
    finally:
        await runner.cleanup()


async def test_protocol_upgrades_are_refused(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path)
    )
    status, _, body = await _call(
        "GET", running.url + "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"}
    )
    assert status == 501 and body["error"] == "not_implemented"
    assert partner.api_calls == 0


async def test_a_stalled_small_body_is_408(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path, timeout=0.5)
    )
    port = int(running.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PUT /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert partner.api_calls == 0


async def test_a_destination_failing_mid_response_cuts_the_apps_connection(
    pki: Pki, client_cert: Issued, start_outbound: StartOutbound
) -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        writer.close()  # 60 bytes short

    server = await asyncio.start_server(truncate, "127.0.0.1", 0, ssl=server_context(pki))
    port = server.sockets[0].getsockname()[1]
    try:
        running = await start_outbound(
            outbound_config(
                destination=f"https://localhost:{port}", cert=client_cert, ca=pki.ca.cert_path
            )
        )
        async with aiohttp.ClientSession() as session, session.get(running.url + "/x") as response:
            assert response.status == 200  # the head went out before the failure
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()  # truncated, never passed off as complete
    finally:
        server.close()
