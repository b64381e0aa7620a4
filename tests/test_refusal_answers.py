"""Every refusal in one JSON shape, and no ``Server`` version banner, over real TLS.

Checked byte for byte on the wire: ``OPTIONS *``, ``CONNECT``, parser errors,
policy refusals and relayed answers.  aiohttp answered ``OPTIONS *`` with a
text/plain 404 and stamped ``Server: Python/3.x aiohttp/3.x`` on everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.http1.head import SERVER_NAME
from tests.conftest import MakeGateway, Upstream
from tests.pki import Issued
from tests.security.conftest import MTLS_CLIENT
from tests.test_proxy import RawConnection, RawResponse, get


def _assert_json_refusal(response: RawResponse, status: int, error: str) -> None:
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert response.headers.get("Server") == SERVER_NAME


REFUSALS = {
    "options_asterisk": ("OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 404, "not_found"),
    "connect": (
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
        "not_implemented",
    ),
    "garbage": ("GARBAGE\r\n\r\n", 400, "invalid_request"),
    "bad_host": ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid_request"),
    "no_certificate": (get("/x"), 401, "client_certificate_required"),
}


@pytest.mark.parametrize("name", REFUSALS)
async def test_each_refusal_answers_json_without_a_version_banner(
    make_gateway: MakeGateway, name: str
) -> None:
    head, status, error = REFUSALS[name]
    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, None)
    response = await caller.request(head)
    await caller.close()
    _assert_json_refusal(response, status, error)


async def test_connect_closes_the_connection(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, None)
    head, _, _ = REFUSALS["connect"]
    response = await caller.request(head)
    assert response.headers["Connection"] == "close"
    assert await caller.at_eof()
    await caller.close()


async def test_token_endpoint_answers_carry_no_version_banner(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, None)
    response = await caller.request(get("/.well-known/openid-configuration"))
    await caller.close()
    assert response.status == 200
    assert response.headers.get("Server") == SERVER_NAME


async def test_an_upstream_server_header_is_relayed_as_sent(
    make_gateway: MakeGateway,
    start_upstream: Callable[[web.Application], Awaitable[Upstream]],
    client_cert: Issued,
) -> None:
    async def named(_: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Server": "upstream/1.0"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", named)
    upstream = await start_upstream(app)
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": upstream.url}]
    )
    caller = await RawConnection.open(gw, client_cert)
    response = await caller.request(get("/x"))
    await caller.close()
    assert response.status == 200
    assert response.headers.getall("Server") == ["upstream/1.0"]


async def test_an_aiohttp_upstream_banner_is_relayed_as_sent(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    """The echo upstream runs the gateway's own aiohttp: its banner is the upstream's to send."""
    from aiohttp.http import SERVER_SOFTWARE

    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, client_cert)
    response = await caller.request(get("/x"))
    await caller.close()
    assert response.status == 200
    assert response.headers.getall("Server") == [SERVER_SOFTWARE]


@pytest.fixture
async def nameless_upstream() -> AsyncIterator[str]:
    """Answers one request per connection, with no Server field."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_an_upstream_answer_without_server_gets_the_product_name(
    make_gateway: MakeGateway, nameless_upstream: str, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": nameless_upstream}]
    )
    caller = await RawConnection.open(gw, client_cert)
    response = await caller.request(get("/x"))
    await caller.close()
    assert response.status == 200
    assert response.headers.getall("Server") == [SERVER_NAME]
