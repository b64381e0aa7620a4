"""Outbound fixtures: a stand-in partner (token endpoint + API over mTLS) and listeners.

The partner is a real aiohttp server on a real TLS socket that requires a
client certificate.  It counts every token request it answers, issues
short-lived opaque tokens, can revoke them, and echoes what its API received
together with the SHA-256 of the client certificate on the connection, so the
tests observe real HTTP calls rather than the gateway's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config.values import BindAddress
from gateway.listener.config import LimitsConfig
from gateway.ops.metrics import create_metrics
from gateway.outbound.config import (
    OutboundConfig,
    OutboundRouteConfig,
    OutboundTlsConfig,
    OutboundTokenConfig,
)
from gateway.outbound.listener import OutboundListener
from gateway.server import BoundOutbound, bind_outbound
from tests.pki import Issued, Pki


def x5t_s256(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def server_context(pki: Pki, server: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    chosen = server or pki.server
    ctx.load_cert_chain(chosen.cert_path, chosen.key_path)
    ctx.load_verify_locations(pki.ca.cert_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def start_tls_app(app: web.Application, ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def peer_x5t(request: web.Request) -> str:
    ssl_object = request.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
    return x5t_s256(ssl_object.getpeercert(binary_form=True))


@dataclass
class Partner:
    """State of the stand-in; tests change ``lifetime``, ``delay``, ``fail``, ``revoked``."""

    url: str = ""
    lifetime: float = 300
    delay: float = 0.0  # seconds the token endpoint takes
    fail: tuple[int, dict[str, Any]] | None = None  # (status, JSON body) for token requests
    issuer: str | None = None  # discovery's `issuer`; None: the partner's own URL
    revoked: set[str] = field(default_factory=set)
    reject_all: bool = False  # /api/protected refuses every token
    token_calls: dict[str, int] = field(default_factory=dict)  # path -> count
    bound: dict[str, str] = field(default_factory=dict)  # token -> x5t#S256 it was issued to
    api_calls: int = 0

    @property
    def tokens_issued(self) -> int:
        return sum(self.token_calls.values())

    async def token(self, request: web.Request) -> web.Response:
        self.token_calls[request.path] = self.token_calls.get(request.path, 0) + 1
        form = await request.post()
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            return web.json_response(self.fail[1], status=self.fail[0])
        client_id, scope = form.get("client_id"), form.get("scope", "")
        assert not isinstance(client_id, bytes) and not isinstance(scope, bytes)
        value = f"tok-{self.tokens_issued}-{client_id}-{scope}"
        value = value.replace(" ", "+")
        self.bound[value] = peer_x5t(request)
        return web.json_response(
            {"access_token": value, "token_type": "Bearer", "expires_in": self.lifetime},
            headers={"Cache-Control": "no-store"},
        )

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer or self.url,
                "token_endpoint": self.url + "/token",
                "mtls_endpoint_aliases": {"token_endpoint": self.url + "/mtls/token"},
            }
        )

    async def api(self, request: web.Request) -> web.StreamResponse:
        self.api_calls += 1
        authorization = request.headers.getall("Authorization", [])
        body = await request.read()
        if request.path.startswith("/api/protected"):
            token = authorization[0].removeprefix("Bearer ") if authorization else ""
            if self.reject_all or token not in self.bound or token in self.revoked:
                return web.json_response(
                    {"error": "invalid_token"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        if request.path.startswith("/api/slow"):
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(10):
                await response.write(b"x" * 10)
                await asyncio.sleep(0.2)
            await response.write_eof()
            return response
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "authorization": authorization,
                "peer_x5t": peer_x5t(request),
                "body_bytes": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/token", self.token)
        app.router.add_post("/mtls/token", self.token)
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_route("*", "/{tail:.*}", self.api)
        return app


@pytest.fixture
async def partner(pki: Pki) -> AsyncIterator[Partner]:
    state = Partner()
    runner, port = await start_tls_app(state.app(), server_context(pki))
    state.url = f"https://localhost:{port}"
    yield state
    await runner.cleanup()


@dataclass
class RunningOutbound:
    listener: OutboundListener
    url: str


StartOutbound = Callable[..., Awaitable[RunningOutbound]]


def outbound_config(
    *,
    destination: str | None = None,
    routes: list[OutboundRouteConfig] | None = None,
    cert: Issued,
    ca: Path | None,
    token: OutboundTokenConfig | None = None,
    server_sha256: tuple[str, ...] = (),
    timeout: float = 10.0,
    connect_timeout: float = 2.0,
) -> OutboundConfig:
    if routes is None:
        assert destination is not None
        routes = [OutboundRouteConfig("/", None, destination, token)]
    return OutboundConfig(
        bind=BindAddress("127.0.0.1", 0),
        allow_non_loopback=False,
        routes=tuple(routes),
        tls=OutboundTlsConfig(cert.cert_path, cert.key_path, ca, server_sha256),
        connect_timeout=connect_timeout,
        timeout=timeout,
    )


@pytest.fixture
async def start_outbound() -> AsyncIterator[StartOutbound]:
    """One OutboundListener bound the way ``serve`` binds it (gateway.server.bind_outbound)."""
    started: list[tuple[BoundOutbound, OutboundListener]] = []

    async def start(config: OutboundConfig, limits: LimitsConfig | None = None) -> RunningOutbound:
        listener = OutboundListener(config, index=0, source=Path("test.yaml"))
        bound = await bind_outbound(
            listener,
            limits=limits or LimitsConfig(),
            metrics=create_metrics(),
            access_log=None,
            where="test.yaml:outbound[0].bind",
        )
        started.append((bound, listener))
        return RunningOutbound(listener, f"http://127.0.0.1:{bound.address[1]}")

    yield start
    for bound, listener in started:
        await bound.close()
        await listener.close()


def token_settings(
    partner: Partner, *, issuer: bool = False, scopes: tuple[str, ...] = ("api1",)
) -> OutboundTokenConfig:
    if issuer:
        return OutboundTokenConfig(None, partner.url, "mtls.client", scopes)
    return OutboundTokenConfig(partner.url + "/token", None, "mtls.client", scopes)
