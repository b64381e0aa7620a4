"""WebSockets through a real gateway (real TLS, port 0) to a real aiohttp WebSocket upstream.

Close codes both ways, the message-size limit at exactly the limit and one
byte over (both directions, text and binary, and with a caller that offers
compression, which the gateway does not negotiate), the idle timeout, both
ends told when the gateway stops, and sockets closed when their client is
removed, disabled or revoked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType, web

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.websocket import WebSocketLimits
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    name_secret,
    registry_client,
    write_config,
)
from tests.pki import Issued, Pki
from tests.test_revocation import write_crl

CLIENT_DN = "CN=client, OU=production, O=company"
MTLS_CLIENT = registry_client("mtls.client", name_secret(CLIENT_DN))
KiB = 1 << 10
MiB = 1 << 20
# Seconds a test waits for something the gateway must do; a bound, not a measurement.
PATIENCE = 10.0
StartUpstream = Callable[[web.Application], Awaitable[Upstream]]


@dataclass
class WsUpstream:
    """A WebSocket upstream that echoes, obeys commands and records how it was closed."""

    url: str
    closes: asyncio.Queue[tuple[int | None, str]] = field(default_factory=asyncio.Queue)


def _upstream_app(record: asyncio.Queue[tuple[int | None, str]]) -> web.Application:
    async def ws(request: web.Request) -> web.StreamResponse:
        # No limit of its own: the gateway's is the one under test.
        sock = web.WebSocketResponse(max_msg_size=0, autoclose=False)
        await sock.prepare(request)
        while not sock.closed:
            # Not ``async for``: it ends at a close frame, and that is what is recorded.
            msg = await sock.receive()
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close "):
                _, code, reason = msg.data.split(" ", 2)
                await sock.close(code=int(code), message=reason.encode())
            elif msg.type is WSMsgType.TEXT and msg.data == "vanish":
                assert request.transport is not None
                request.transport.abort()  # no close frame: the TCP connection just ends
                break
            elif msg.type is WSMsgType.TEXT and msg.data.startswith("send "):
                await sock.send_bytes(b"u" * int(msg.data.split()[1]))
            elif msg.type is WSMsgType.TEXT:
                await sock.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                await record.put((msg.data, msg.extra or ""))
                await sock.close(code=msg.data, message=(msg.extra or "").encode())
            elif msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSING):
                break
        if sock.close_code is not None and record.empty():
            await record.put((sock.close_code, ""))
        return sock

    app = web.Application()
    app.router.add_get("/{tail:.*}", ws)
    return app


@pytest.fixture
async def ws_upstream(start_upstream: StartUpstream) -> WsUpstream:
    closes: asyncio.Queue[tuple[int | None, str]] = asyncio.Queue()
    upstream = await start_upstream(_upstream_app(closes))
    return WsUpstream(upstream.url, closes)


async def _gateway(
    make_gateway: MakeGateway,
    upstream: WsUpstream | Upstream,
    *,
    clients: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
    tls: dict[str, Any] | None = None,
) -> GatewayUnderTest:
    return await make_gateway(
        clients=clients or [MTLS_CLIENT],
        routes=[{"prefix": "/", "upstream": upstream.url, "auth": "client"}],
        extra={"limits": limits} if limits else None,
        tls=tls,
    )


async def _closed_with(ws: aiohttp.ClientWebSocketResponse[bool]) -> tuple[int, str]:
    """The close frame the gateway sent, skipping data still in flight."""
    async with asyncio.timeout(PATIENCE):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                return msg.data, msg.extra or ""
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PONG), msg


async def _upstream_saw(upstream: WsUpstream) -> tuple[int | None, str]:
    async with asyncio.timeout(PATIENCE):
        return await upstream.closes.get()


# --- the configuration keys ---------------------------------------------------------

ROUTES = [{"prefix": "/", "upstream": "http://127.0.0.1:1", "auth": "client"}]


def test_limits_default_to_4_mib_and_300_s_and_are_read_from_limits(
    tmp_path: Path, pki: Pki
) -> None:
    path, _ = write_config(tmp_path, pki, clients=[], routes=ROUTES)
    assert WebSocketLimits.from_config(load_config(path, env={}).limits) == WebSocketLimits(
        4 * MiB, 300.0
    )
    limits = {"websocket_max_message_bytes": 1024, "websocket_idle_timeout": 2.5}
    path, _ = write_config(tmp_path, pki, clients=[], routes=ROUTES, extra={"limits": limits})
    assert WebSocketLimits.from_config(load_config(path, env={}).limits) == WebSocketLimits(
        1024, 2.5
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("websocket_max_message_bytes", 0),
        ("websocket_max_message_bytes", "4MiB"),
        ("websocket_max_message_bytes", True),
        ("websocket_idle_timeout", 0),
        ("websocket_idle_timeout", -1),
    ],
)
def test_a_bad_limit_is_one_problem_naming_file_and_key(
    tmp_path: Path, pki: Pki, key: str, value: Any
) -> None:
    path, _ = write_config(tmp_path, pki, clients=[], routes=ROUTES, extra={"limits": {key: value}})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}:limits.{key}: expected a positive")


# --- close codes and reasons ---------------------------------------------------------


async def test_upstream_close_code_and_reason_reach_the_caller(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream)
    async with gw.session(client_cert) as session, session.ws_connect(gw.url + "/ws") as ws:
        await ws.send_str("close 4001 session expired")
        assert await _closed_with(ws) == (4001, "session expired")


async def test_caller_close_code_and_reason_reach_the_upstream_and_are_echoed(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream)
    async with gw.session(client_cert) as session:
        ws = await session.ws_connect(gw.url + "/ws")
        await ws.send_str("ping?")
        assert await ws.receive_str(timeout=PATIENCE) == "ping?"
        await ws.close(code=4002, message=b"user logged out")
        assert await _upstream_saw(ws_upstream) == (4002, "user logged out")
        # RFC 6455 §5.5.1: the answer to a close frame echoes its code.
        assert ws.close_code == 4002


async def test_upstream_vanishing_without_a_close_frame_closes_the_caller_with_1014(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream)
    async with gw.session(client_cert) as session, session.ws_connect(gw.url + "/ws") as ws:
        await ws.send_str("vanish")
        assert await _closed_with(ws) == (1014, "the upstream connection was lost")


async def test_gateway_stopping_with_a_socket_open_closes_both_ends_with_1001(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream)
    async with gw.session(client_cert) as session, session.ws_connect(gw.url + "/ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=PATIENCE) == "hello"
        # A WebSocket does not end by itself within a grace period: on
        # shutdown the gateway closes it (OpenSockets.close_all), both ends.
        stopping = asyncio.create_task(gw.running.stop(grace=0.2))
        assert await _closed_with(ws) == (1001, "the gateway is shutting down")
        await stopping
    assert await _upstream_saw(ws_upstream) == (1001, "the gateway is shutting down")


# --- the message-size limit ----------------------------------------------------------


async def test_default_limit_is_4_mib_and_a_message_of_exactly_4_mib_passes(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream)
    payload = b"m" * (4 * MiB)
    async with (
        gw.session(client_cert) as session,
        session.ws_connect(gw.url + "/ws", max_msg_size=0) as ws,
    ):
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=PATIENCE) == payload
        await ws.send_bytes(payload + b"!")
        assert (await _closed_with(ws))[0] == 1009
    assert (await _upstream_saw(ws_upstream))[0] == 1009


LIMIT = 64 * KiB


@pytest.mark.parametrize("kind", ["binary", "text", "compressed"])
async def test_caller_message_of_exactly_the_limit_passes_and_one_byte_more_closes_with_1009(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued, kind: str
) -> None:
    gw = await _gateway(make_gateway, ws_upstream, limits={"websocket_max_message_bytes": LIMIT})
    async with (
        gw.session(client_cert) as session,
        session.ws_connect(
            gw.url + "/ws", max_msg_size=0, compress=15 if kind == "compressed" else 0
        ) as ws,
    ):
        if kind == "text":
            # The limit counts UTF-8 bytes, not characters: "é" is two.
            exact = "é" * (LIMIT // 2)
            await ws.send_str(exact)
            assert await ws.receive_str(timeout=PATIENCE) == exact
            await ws.send_str(exact + "a")
        else:
            # The caller offered permessage-deflate; the gateway negotiates no
            # extension (none is offered upstream), so nothing is compressed.
            assert ws.compress == 0
            exact_bytes = b"\0" * LIMIT
            await ws.send_bytes(exact_bytes)
            assert await ws.receive_bytes(timeout=PATIENCE) == exact_bytes
            await ws.send_bytes(exact_bytes + b"\0")
        code, _ = await _closed_with(ws)
        assert code == 1009
    upstream_code, reason = await _upstream_saw(ws_upstream)
    assert upstream_code == 1009
    assert f"{LIMIT}-byte limit" in reason


async def test_upstream_message_of_exactly_the_limit_passes_and_one_byte_more_closes_with_1009(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream, limits={"websocket_max_message_bytes": LIMIT})
    async with (
        gw.session(client_cert) as session,
        session.ws_connect(gw.url + "/ws", max_msg_size=0) as ws,
    ):
        await ws.send_str(f"send {LIMIT}")
        assert await ws.receive_bytes(timeout=PATIENCE) == b"u" * LIMIT
        await ws.send_str(f"send {LIMIT + 1}")
        code, reason = await _closed_with(ws)
        assert code == 1009
        assert f"{LIMIT}-byte limit" in reason
    assert (await _upstream_saw(ws_upstream))[0] == 1009


# --- the idle timeout ----------------------------------------------------------------


async def test_idle_socket_is_closed_with_1001_and_a_reason_both_ways(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, ws_upstream, limits={"websocket_idle_timeout": 1})
    async with gw.session(client_cert) as session, session.ws_connect(gw.url + "/ws") as ws:
        assert await _closed_with(ws) == (1001, "idle for 1 s")
    assert await _upstream_saw(ws_upstream) == (1001, "idle for 1 s")


async def test_pings_pass_through_and_keep_the_socket_open(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, client_cert: Issued
) -> None:
    idle = 2.0
    gw = await _gateway(make_gateway, ws_upstream, limits={"websocket_idle_timeout": idle})
    async with (
        gw.session(client_cert) as session,
        session.ws_connect(gw.url + "/ws", autoping=False) as ws,
    ):
        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 2 * idle:
            await ws.ping(b"%d" % pings)
            # The upstream's pong comes back through the gateway.
            pong = await ws.receive(timeout=PATIENCE)
            assert (pong.type, pong.data) == (WSMsgType.PONG, b"%d" % pings)
            pings += 1
            await asyncio.sleep(idle / 8)
        await ws.send_str(f"still open after {pings} pings")
        assert await ws.receive_str(timeout=PATIENCE) == f"still open after {pings} pings"
        assert (await _closed_with(ws))[0] == 1001


# --- the caller's standing while the socket is open ----------------------------------


ALICE_DN = "CN=alice, OU=production, O=company"
BOB_DN = "CN=bob, OU=production, O=company"
CAROL_DN = "CN=carol, OU=production, O=company"
ALICE = registry_client("alice", name_secret(ALICE_DN))
BOB = registry_client("bob", name_secret(BOB_DN))


async def _refused_within(
    gw: GatewayUnderTest, alice: Issued, bob: Issued, change: Any
) -> tuple[int, str, float]:
    """Open one socket each for alice and bob, apply ``change``; alice's must close."""
    async with (
        gw.session(alice) as alice_session,
        gw.session(bob) as bob_session,
        alice_session.ws_connect(gw.url + "/ws") as alice_ws,
        bob_session.ws_connect(gw.url + "/ws") as bob_ws,
    ):
        await alice_ws.send_str("hello")
        assert await alice_ws.receive_str(timeout=PATIENCE) == "hello"
        changed = time.monotonic()
        change()
        code, reason = await _closed_with(alice_ws)
        elapsed = time.monotonic() - changed
        # Only the client concerned loses its socket.
        await bob_ws.send_str("bob still here")
        assert await bob_ws.receive_str(timeout=PATIENCE) == "bob still here"
    return code, reason, elapsed


def _write_registry(gw: GatewayUnderTest, clients: list[dict[str, Any]]) -> None:
    tmp = gw.registry_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"clients": clients}))
    tmp.replace(gw.registry_path)


async def test_socket_closed_with_1008_when_its_client_is_removed_from_the_registry(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, pki: Pki
) -> None:
    gw = await _gateway(make_gateway, ws_upstream, clients=[ALICE, BOB])
    code, reason, elapsed = await _refused_within(
        gw, pki.client("alice"), pki.client("bob"), lambda: _write_registry(gw, [BOB])
    )
    assert code == 1008
    assert "not registered" in reason
    # Issue 2's rule: a removed client is refused within 5 s (the registry
    # file is polled each second, the sockets' standing too).
    assert elapsed < 5.0, elapsed


async def test_socket_closed_with_1008_when_its_client_is_disabled(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, pki: Pki
) -> None:
    gw = await _gateway(make_gateway, ws_upstream, clients=[ALICE, BOB])
    code, reason, elapsed = await _refused_within(
        gw,
        pki.client("alice"),
        pki.client("bob"),
        lambda: _write_registry(gw, [{**ALICE, "enabled": False}, BOB]),
    )
    assert code == 1008
    assert "no enabled client" in reason
    assert elapsed < 5.0, elapsed


async def test_socket_closed_with_1008_when_its_certificate_is_revoked(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, pki: Pki, tmp_path: Path
) -> None:
    alice, bob = pki.client("alice"), pki.client("bob")
    crl_path = tmp_path / "ca.crl"
    write_crl(pki, crl_path, [])
    gw = await _gateway(make_gateway, ws_upstream, clients=[ALICE, BOB], tls={"crl": str(crl_path)})
    code, reason, elapsed = await _refused_within(
        gw, alice, bob, lambda: write_crl(pki, crl_path, [alice])
    )
    assert code == 1008
    assert "revoked" in reason
    assert elapsed < 5.0, elapsed


async def test_socket_on_a_token_route_closed_with_1008_when_its_client_is_disabled(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, pki: Pki
) -> None:
    alice = pki.client("alice")
    gw = await make_gateway(
        clients=[ALICE, BOB],
        routes=[{"prefix": "/", "upstream": ws_upstream.url, "auth": "token"}],
    )
    async with gw.session(alice) as session:
        grant = {"grant_type": "client_credentials", "client_id": "alice"}
        async with session.post(gw.url + "/connect/token", data=grant) as response:
            assert response.status == 200
            token = (await response.json())["access_token"]
        async with session.ws_connect(
            gw.url + "/ws", headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=PATIENCE) == "hello"
            _write_registry(gw, [{**ALICE, "enabled": False}, BOB])
            code, reason = await _closed_with(ws)
    assert code == 1008
    assert reason == "the token's client is no longer registered or enabled"


async def test_socket_closed_with_1008_when_its_certificate_expires(
    make_gateway: MakeGateway, ws_upstream: WsUpstream, pki: Pki
) -> None:
    # Valid for a few seconds more: the socket outlives it.
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    carol = pki.client("carol", not_after=soon)
    gw = await _gateway(
        make_gateway, ws_upstream, clients=[registry_client("carol", name_secret(CAROL_DN))]
    )
    async with gw.session(carol) as session, session.ws_connect(gw.url + "/ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=PATIENCE) == "hello"
        assert await _closed_with(ws) == (1008, "certificate refused: certificate has expired")
    assert dt.datetime.now(dt.UTC) >= soon
