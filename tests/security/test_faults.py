"""Fault injection: broken upstreams, a flapping Redis, torn files at reload, a full disk.

The gateway must keep serving what it safely can and recover by itself.
Already covered elsewhere: upstream down (502), slow (504) or closing
mid-response (tests/test_proxy.py); one Redis outage with the cache window
(tests/test_redis_gateway.py, tests/registry/test_redis_store.py); a broken
registry file or key file at reload (tests/test_auth.py, tests/oauth/test_rotation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.registry.config import RegistryConfig
from gateway.registry.model import parse_client
from gateway.registry.redis_store import RedisRegistry
from tests.conftest import GatewayUnderTest, MakeGateway, Upstream, registry_client
from tests.pki import Issued, Pki
from tests.registry.conftest import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.security.conftest import CLIENT_DN, MTLS_CLIENT
from tests.test_proxy import MiB

POLL_LIMIT = 15.0


async def poll(check: Callable[[], Awaitable[bool]], what: str, limit: float = POLL_LIMIT) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, f"never happened: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def status(gw: GatewayUnderTest, cert: Issued | None, path: str = "/x") -> int:
    """On a new connection, so nothing cached per connection plays a part."""
    async with gw.session(cert) as session, session.get(gw.url + path) as r:
        await r.read()
        return r.status


def rst_close(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashing process's kernel does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def resetting_upstream() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """Resets the connection mid-body: ``/request-body`` while reading the upload,
    ``/response-body`` after sending part of a declared 8 MiB response."""
    seen = {"connections": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b" /request-body" in head.split(b"\r\n", 1)[0]:
                await reader.readexactly(256 * 1024)  # part of the upload, then crash
                rst_close(writer)
                return
            if b" /response-body" in head.split(b"\r\n", 1)[0]:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 * MiB))
                writer.write(b"x" * (256 * 1024))
                await writer.drain()
                await asyncio.sleep(0.05)
                rst_close(writer)
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


async def test_upstream_reset_mid_request_body_is_502_and_the_gateway_keeps_serving(
    make_gateway: MakeGateway, resetting_upstream: tuple[str, dict[str, int]], client_cert: Issued
) -> None:
    url, _ = resetting_upstream
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": url}])

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):  # 64 MiB: far more than the upstream reads before it dies
            yield b"u" * MiB

    async with gw.session(client_cert) as session:
        try:
            async with asyncio.timeout(20):
                async with session.post(gw.url + "/request-body", data=body()) as r:
                    outcome: int | str = r.status
                    if r.status == 502:
                        assert (await r.json())["error"] == "bad_gateway"
        except (aiohttp.ClientError, ConnectionError):
            outcome = "connection cut"  # the gateway may stop reading the upload and close
    assert outcome in (502, "connection cut")
    for _ in range(3):
        assert await status(gw, client_cert, "/fine") == 200


async def test_upstream_reset_mid_response_body_cuts_that_response_only(
    make_gateway: MakeGateway, resetting_upstream: tuple[str, dict[str, int]], client_cert: Issued
) -> None:
    url, _ = resetting_upstream
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": url}])
    received = 0
    async with gw.session(client_cert) as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(20), session.get(gw.url + "/response-body") as r:
                assert r.status == 200
                assert r.headers["Content-Length"] == str(8 * MiB)
                async for piece in r.content.iter_any():
                    received += len(piece)
    assert received < 8 * MiB
    for _ in range(3):
        assert await status(gw, client_cert, "/fine") == 200


async def test_upstream_stalling_mid_response_is_cut_after_the_route_timeout(
    make_gateway: MakeGateway,
    start_upstream: Callable[[web.Application], Awaitable[Upstream]],
    client_cert: Issued,
) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = MiB
        await response.prepare(request)
        await response.write(b"x" * 1024)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/stall", stall)

    async def fine(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/fine", fine)
    upstream = await start_upstream(app)
    gw = await make_gateway(
        clients=[MTLS_CLIENT], routes=[{"prefix": "/", "upstream": upstream.url, "timeout": 0.5}]
    )
    started = time.monotonic()
    try:
        async with gw.session(client_cert) as session:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with asyncio.timeout(10), session.get(gw.url + "/stall") as r:
                    assert r.status == 200
                    await r.read()
        # Cut by the idle read timeout, not by the upstream finally answering.
        assert time.monotonic() - started < 5
        assert await status(gw, client_cert, "/fine") == 200
    finally:
        release.set()


# --- Redis flapping -----------------------------------------------------------------

PREFIX = "gw-faults:"


async def test_redis_flapping_twice_the_gateway_recovers_by_itself(
    make_gateway: MakeGateway,
    redis_server: RedisServer,  # noqa: F811
    pki: Pki,
    client_cert: Issued,
) -> None:
    seed = [
        parse_client(
            {
                "client_id": "mtls.client",
                "allowed_scopes": ["api1"],
                "secrets": [{"type": "X509CertificateName", "value": CLIENT_DN}],
            }
        )
    ]
    writer = RedisRegistry(
        RegistryConfig(
            kind="redis",
            path=None,
            url=redis_server.url,
            key_prefix=PREFIX,
            max_stale=60.0,
            cache_size=100,
        )
    )
    try:
        await writer.replace_all(seed)
        gw = await make_gateway(
            clients=[],
            extra={
                "registry": {
                    "kind": "redis",
                    "url": redis_server.url,
                    "key_prefix": PREFIX,
                    "max_stale": 0.5,
                    "connect_timeout": 0.3,
                    "command_timeout": 0.3,
                }
            },
        )
        stranger = pki.client("stranger")
        assert await status(gw, client_cert) == 200
        for flap in range(2):
            redis_server.kill()

            async def unavailable() -> bool:
                return await status(gw, client_cert) == 503

            await poll(unavailable, f"flap {flap}: fail closed once max_stale is over")
            assert await status(gw, stranger) == 503  # never a guess
            redis_server.start()  # empty: nothing is persisted
            await writer.replace_all(seed)

            async def recovered() -> bool:
                return await status(gw, client_cert) == 200

            took = await poll(recovered, f"flap {flap}: recovery without a restart")
            print(f"flap {flap}: recovered {took:.2f}s after Redis came back")
            assert await status(gw, stranger) == 403
    finally:
        await writer.close()


# --- torn files at reload -----------------------------------------------------------


def reload_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    pattern = re.compile(
        r'^mtls_gateway_reloads_total\{component="([^"]+)",outcome="([^"]+)"\} (\S+)$', re.M
    )
    for component, outcome, value in pattern.findall(metrics_text):
        counts[(component, outcome)] = float(value)
    return counts


async def metrics(gw: GatewayUnderTest) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/metrics") as r:
        assert r.status == 200
        return reload_counts(await r.text())


@pytest.fixture
async def own_files_gateway(
    make_gateway: MakeGateway, pki: Pki, tmp_path: Path
) -> GatewayUnderTest:
    """A gateway whose certificate, key and CA bundle are its own copies (safe to tear)."""
    files = tmp_path / "own"
    files.mkdir()
    tls = {}
    for key, source in (
        ("cert", pki.server.cert_path),
        ("key", pki.server.key_path),
        ("client_ca", pki.ca.cert_path),
    ):
        target = files / source.name
        shutil.copy(source, target)
        tls[key] = str(target)
    return await make_gateway(clients=[MTLS_CLIENT], tls=tls)


def torn(path: Path) -> bytes:
    """Cut the file in half, as a writer interrupted mid-write leaves it; return the original."""
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    return original


async def token_status(gw: GatewayUnderTest, cert: Issued) -> int:
    form = {"grant_type": "client_credentials", "client_id": "mtls.client"}
    async with gw.session(cert) as session, session.post(gw.url + "/connect/token", data=form) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize(
    ("which", "component"),
    [
        ("server certificate", "tls:listeners[0]"),
        ("server key", "tls:listeners[0]"),
        ("client CA bundle", "tls:listeners[0]"),
        ("signing key", "signing_keys"),
        ("registry", "registry"),
    ],
)
async def test_a_file_torn_during_reload_keeps_the_running_state_and_is_counted(
    own_files_gateway: GatewayUnderTest, client_cert: Issued, which: str, component: str
) -> None:
    gw = own_files_gateway
    tls = gw.gateway.config.listeners[0].tls
    path = {
        "server certificate": tls.cert,
        "server key": tls.key,
        "client CA bundle": tls.client_ca,
        "signing key": gw.config_path.parent / "signing.pem",
        "registry": gw.registry_path,
    }[which]
    assert path is not None
    before = await metrics(gw)
    original = torn(path)
    try:
        # SIGHUP's reload, now, rather than waiting for the file poll.
        assert await gw.gateway.reload() is False
        # Still serving with what it had: handshakes, proxied requests, tokens.
        assert await status(gw, client_cert) == 200
        assert await token_status(gw, client_cert) == 200
        after = await metrics(gw)
        assert after[(component, "failed")] >= before.get((component, "failed"), 0) + 1
    finally:
        path.write_bytes(original)
    assert await gw.gateway.reload() is True
    assert await status(gw, client_cert) == 200
    final = await metrics(gw)
    assert final[(component, "ok")] >= before.get((component, "ok"), 0) + 1


async def test_garbage_registry_does_not_stop_the_file_watcher(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    # A registry file that no YAML parser can nest that deep (or any other
    # surprise) must be one failed reload, not the end of reloading.
    gw = await make_gateway(clients=[MTLS_CLIENT])
    newcomer = pki.client("newcomer")
    assert await status(gw, newcomer) == 403
    before = await metrics(gw)
    gw.registry_path.write_text("clients: " + "[" * 5000)

    async def failure_counted() -> bool:
        return (await metrics(gw)).get(("registry", "failed"), 0) > before.get(
            ("registry", "failed"), 0
        )

    await poll(failure_counted, "the watcher reports the failed reload")
    assert await status(gw, client_cert) == 200  # the running registry is kept
    gw.registry_path.write_text(
        yaml.safe_dump(
            {
                "clients": [
                    MTLS_CLIENT,
                    registry_client(
                        "newcomer",
                        {"type": "X509CertificateThumbprint", "value": newcomer.thumbprint},
                    ),
                ]
            }
        )
    )

    async def picked_up() -> bool:
        return await status(gw, newcomer) == 200

    await poll(picked_up, "the watcher still reloads after the garbage file")


# --- a full disk for logs -------------------------------------------------------------


async def test_logging_to_a_full_disk_does_not_stop_serving(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    from tests.security.test_logs import serve_subprocess

    clients = [MTLS_CLIENT]
    # Both streams on /dev/full: every log write fails with ENOSPC.
    with Path("/dev/full").open("wb") as full:
        async with serve_subprocess(
            tmp_path, pki, clients=clients, upstream=echo_upstream, stdout=full, stderr=full
        ) as gateway:
            context = pki.client_context(client_cert)
            # Enough access-log lines (~250 bytes each) that batches are flushed
            # from the request path too, not only from the timer.
            # One keep-alive connection throughout: a failed write must not cost
            # the caller its connection either.
            opened: list[object] = []
            trace = aiohttp.TraceConfig()

            async def connected(*_: object) -> None:
                opened.append(object())

            trace.on_connection_create_end.append(connected)
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=1), trace_configs=[trace]
            ) as s:
                for i in range(400):
                    async with s.get(f"{gateway.url}/log-me/{i}") as r:
                        assert r.status == 200
                        await r.read()
            assert len(opened) == 1
            # Refusals log at WARNING through the logging queue: those writes fail too.
            anonymous = aiohttp.TCPConnector(ssl=pki.client_context(None))
            async with aiohttp.ClientSession(connector=anonymous) as s:
                for _ in range(20):
                    async with s.get(f"{gateway.url}/refused") as r:
                        assert r.status == 401
            assert gateway.process.poll() is None, "the gateway died"
