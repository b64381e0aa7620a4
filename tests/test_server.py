"""The real process: graceful shutdown on SIGTERM (subprocess, real sockets)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Upstream, free_port, name_secret, registry_client, write_config
from tests.pki import Issued, Pki

SLOW_SECONDS = 2.0


@pytest.fixture
async def slow_upstream(start_upstream: object) -> AsyncIterator[Upstream]:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return web.Response(text="finally")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    yield await start_upstream(app)  # type: ignore[operator]


async def _serve(
    tmp_path: Path, pki: Pki, upstream: Upstream, drain_delay: float
) -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin = free_port(), free_port()
    config_path, _ = write_config(
        tmp_path,
        pki,
        clients=[
            registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))
        ],
        routes=[{"prefix": "/", "upstream": upstream.url}],
        extra={
            "admin": {"bind": f"127.0.0.1:{admin}"},
            "limits": {"drain_delay": drain_delay, "shutdown_timeout": 10},
        },
    )
    env = {**os.environ, "MTLS_GATEWAY_LISTENERS__0__BIND": f"127.0.0.1:{port}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{admin}/healthz") as r:
                    if r.status == 200:
                        return process, port, admin
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError(process.stderr.read().decode() if process.stderr else "did not start")


async def _refused(port: int, context: ssl.SSLContext) -> bool:
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_finishes_in_flight_requests_then_exits_0(
    tmp_path: Path, pki: Pki, client_cert: Issued, slow_upstream: Upstream
) -> None:
    process, port, _ = await _serve(tmp_path, pki, slow_upstream, drain_delay=0)
    try:
        context = pki.client_context(client_cert)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            in_flight = asyncio.ensure_future(session.get(f"https://localhost:{port}/slow"))
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            refused = False
            for _ in range(30):
                if await _refused(port, context):
                    refused = True
                    break
                await asyncio.sleep(0.05)
            assert refused, "new connections still accepted after SIGTERM"
            assert not in_flight.done(), "the in-flight request was not left to finish"
            response = await in_flight
            assert response.status == 200
            assert await response.text() == "finally"
            response.release()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_drain_delay_fails_readiness_while_still_serving(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    process, port, admin = await _serve(tmp_path, pki, echo_upstream, drain_delay=1.5)
    try:
        context = pki.client_context(client_cert)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert r.status == 503
            async with session.get(f"https://localhost:{port}/still-serving") as r:
                assert r.status == 200
                # Keep-alive callers are told to go elsewhere while it drains.
                assert r.headers["Connection"] == "close"
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_the_suite_runs_on_uvloop_like_serve() -> None:
    """tests/conftest.py picks uvloop: uvloop-only bugs must show up here."""
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
