"""Stopping a running gateway: drain answers and the shutdown timeout, over real TLS.

The gateway is started in-process exactly as ``serve`` starts it
(``assemble`` + ``start_gateway``) and stopped with ``RunningGateway.stop``,
the call ``serve_forever`` makes after SIGTERM and ``limits.drain_delay``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.config.load import load_config
from gateway.runtime import assemble
from gateway.server import RunningGateway, start_gateway
from tests.conftest import GatewayUnderTest, Upstream, write_config
from tests.pki import Issued, Pki
from tests.security.conftest import MTLS_CLIENT
from tests.test_proxy import RawConnection, RawResponse, get

SHUTDOWN_TIMEOUT = 2.0
# The bound: the timeout as written, within 10 %.
TOLERANCE = 0.1


@pytest.fixture
async def sleepy_upstream(
    start_upstream: Callable[[web.Application], Awaitable[Upstream]],
) -> Upstream:
    """Answers /sleep/<seconds> after that many seconds."""

    async def sleep(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(text="slept")

    app = web.Application()
    app.router.add_get("/sleep/{seconds}", sleep)
    app.router.add_get("/{tail:.*}", _answer_now)
    return await start_upstream(app)


async def _answer_now(_: web.Request) -> web.Response:
    return web.Response(text="now")


@pytest.fixture
async def own_gateway(
    tmp_path: Path, pki: Pki, sleepy_upstream: Upstream
) -> AsyncIterator[GatewayUnderTest]:
    """A gateway this module stops itself (make_gateway's teardown would stop it again)."""
    config_path, registry_path = write_config(
        tmp_path,
        pki,
        clients=[MTLS_CLIENT],
        routes=[{"prefix": "/", "upstream": sleepy_upstream.url, "timeout": 30}],
        extra={"limits": {"shutdown_timeout": SHUTDOWN_TIMEOUT}},
    )
    running = await start_gateway(assemble(load_config(config_path, env={})))
    gw = GatewayUnderTest(running, config_path, registry_path, pki)
    yield gw
    if running.runners:  # the test failed before stopping it
        await running.stop(grace=0)


async def _stop(running: RunningGateway) -> float:
    started = time.monotonic()
    await running.stop(grace=running.gateway.config.limits.shutdown_timeout)
    return time.monotonic() - started


async def _cut_or_answered(conn: RawConnection) -> tuple[float, RawResponse | None]:
    """When the connection ended (monotonic), and the answer if one came first."""
    try:
        response = await conn.read_response(timeout=4 * SHUTDOWN_TIMEOUT)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        return time.monotonic(), None
    return time.monotonic(), response


async def test_shutdown_timeout_lets_short_requests_finish_and_cuts_long_ones_on_time(
    own_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    short = await RawConnection.open(own_gateway, client_cert)
    long = await RawConnection.open(own_gateway, client_cert)
    await short.send(get(f"/sleep/{SHUTDOWN_TIMEOUT / 2}"))
    await long.send(get(f"/sleep/{SHUTDOWN_TIMEOUT * 3}"))
    await asyncio.sleep(0.2)  # both requests are in flight upstream
    stop_started = time.monotonic()
    stopping = asyncio.create_task(_stop(own_gateway.running))
    (_, short_answer), (long_end, long_answer) = await asyncio.gather(
        _cut_or_answered(short), _cut_or_answered(long)
    )
    stop_took = await stopping
    await short.close()
    await long.close()
    assert short_answer is not None, "a request finishing inside shutdown_timeout was cut"
    assert short_answer.status == 200
    assert short_answer.headers["Connection"] == "close"  # answered during the drain
    assert long_answer is None, "a request outlasting shutdown_timeout was answered"
    cut_after = long_end - stop_started
    assert SHUTDOWN_TIMEOUT * (1 - TOLERANCE) <= cut_after <= SHUTDOWN_TIMEOUT * (1 + TOLERANCE), (
        f"the long request was cut {cut_after:.2f} s after stop (timeout {SHUTDOWN_TIMEOUT} s)"
    )
    assert stop_took <= SHUTDOWN_TIMEOUT * (1 + TOLERANCE), f"stop took {stop_took:.2f} s"


async def test_stop_with_only_idle_keep_alive_connections_does_not_wait_for_the_timeout(
    own_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    idle = await RawConnection.open(own_gateway, client_cert)
    assert (await idle.request(get("/now"))).status == 200
    stop_took = await _stop(own_gateway.running)
    assert await idle.at_eof()
    await idle.close()
    assert stop_took < SHUTDOWN_TIMEOUT / 2, f"stop took {stop_took:.2f} s with nothing in flight"


async def test_answers_during_the_drain_carry_connection_close(
    own_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    caller = await RawConnection.open(own_gateway, client_cert)
    before = await caller.request(get("/now"))
    assert before.status == 200 and "Connection" not in before.headers  # keep-alive
    # What serve_forever does on SIGTERM for limits.drain_delay: /readyz fails,
    # the listeners still accept and answer.
    own_gateway.gateway.shutting_down = True
    during = await caller.request(get("/now"))
    assert during.status == 200
    assert during.headers["Connection"] == "close"
    assert await caller.at_eof()  # and the gateway closes it after the answer
    await caller.close()
    refused = await RawConnection.open(own_gateway, None)
    answer = await refused.request(get("/now"))  # a refusal too
    await refused.close()
    assert (answer.status, answer.headers["Connection"]) == (401, "close")
