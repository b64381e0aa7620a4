"""Shared fixtures: a test PKI, a real echo upstream, and real gateways on port 0."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.app import Gateway
from gateway.cli.echo import create_echo_app
from gateway.config.load import load_config
from gateway.runtime import assemble
from gateway.server import RunningGateway, start_gateway
from tests.pki import Issued, Pki
from tests.spec_example import write_spec_example


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def spec_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SPEC's example gateway.yaml over a dev PKI, a signing key and its registry."""
    return write_spec_example(tmp_path_factory.mktemp("spec") / "conf")


@pytest.fixture(scope="session")
def client_cert(pki: Pki) -> Issued:
    """The seed's PKI client: CN=client, OU=production, O=company."""
    return pki.client("client", uris=["spiffe://example.org/ns/prod/sa/client"], label="client")


@dataclass
class Upstream:
    url: str
    port: int


async def _start_app(app: web.Application) -> tuple[web.AppRunner, int]:
    # Bodies as sent: the echo hashes the bytes it got, not a decoded copy.
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def echo_upstream() -> AsyncIterator[Upstream]:
    runner, port = await _start_app(create_echo_app())
    yield Upstream(f"http://127.0.0.1:{port}", port)
    await runner.cleanup()


@pytest.fixture
async def start_upstream() -> AsyncIterator[Callable[[web.Application], Awaitable[Upstream]]]:
    """Start any aiohttp app as an upstream (slow, failing, ...) for one test."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> Upstream:
        runner, port = await _start_app(app)
        runners.append(runner)
        return Upstream(f"http://127.0.0.1:{port}", port)

    yield start
    for runner in runners:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayUnderTest:
    running: RunningGateway
    config_path: Path
    registry_path: Path
    pki: Pki

    @property
    def gateway(self) -> Gateway:
        return self.running.gateway

    @property
    def port(self) -> int:
        return self.running.listener_ports[0]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def admin_url(self) -> str:
        assert self.running.admin_address is not None
        return f"http://127.0.0.1:{self.running.admin_address[1]}"

    def session(self, client: Issued | None, **kwargs: Any) -> aiohttp.ClientSession:
        """An HTTP client presenting ``client`` (or no certificate)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.pki.client_context(client)), **kwargs
        )

    def ssl_context(self, client: Issued | None) -> ssl.SSLContext:
        return self.pki.client_context(client)


MakeGateway = Callable[..., Awaitable[GatewayUnderTest]]


def write_config(
    directory: Path,
    pki: Pki,
    *,
    clients: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    tls: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write clients.yaml, a signing key and gateway.yaml; return their paths."""
    from gateway.oauth.keys import generate_signing_key

    registry_path = directory / "clients.yaml"
    registry_path.write_text(yaml.safe_dump({"clients": clients}))
    key_path = directory / "signing.pem"
    if not key_path.exists():
        generate_signing_key(key_path, "ES256")
    tls_config: dict[str, Any] = {
        "cert": str(pki.server.cert_path),
        "key": str(pki.server.key_path),
        "client_ca": str(pki.ca.cert_path),
        "client_certs": "optional",
    }
    tls_config.update(tls or {})
    config: dict[str, Any] = {
        "issuer": "https://gateway.test",
        "listeners": [{"bind": "127.0.0.1:0", "tls": tls_config, **(listener or {})}],
        "admin": {"bind": "127.0.0.1:0"},
        "registry": {"kind": "yaml", "path": str(registry_path)},
        "tokens": {"signing_keys": [str(key_path)], "lifetime": 300},
        "routes": routes,
        "logging": {"format": "text", "level": "INFO"},
    }
    for key, value in (extra or {}).items():
        config[key] = value
    config_path = directory / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path, registry_path


@pytest.fixture
async def make_gateway(
    tmp_path: Path, pki: Pki, echo_upstream: Upstream
) -> AsyncIterator[MakeGateway]:
    """Start a real gateway (real TLS, port 0) in front of the echo upstream.

    Keyword arguments: clients (registry entries), routes (default: "/" with
    auth: client to the echo upstream), tls (listener tls overrides), extra
    (top-level config keys), listener (more listener keys: proxy_protocol, ...).
    """
    started: list[RunningGateway] = []

    async def make(
        *,
        clients: list[dict[str, Any]],
        routes: list[dict[str, Any]] | None = None,
        tls: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        listener: dict[str, Any] | None = None,
    ) -> GatewayUnderTest:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        config_path, registry_path = write_config(
            directory,
            pki,
            clients=clients,
            routes=routes or [{"prefix": "/", "upstream": echo_upstream.url, "auth": "client"}],
            tls=tls,
            extra=extra,
            listener=listener,
        )
        gateway = assemble(load_config(config_path, env={}))
        running = await start_gateway(gateway)
        started.append(running)
        return GatewayUnderTest(running, config_path, registry_path, pki)

    yield make
    for running in started:
        await running.stop(grace=0.5)


def name_secret(dn: str) -> dict[str, str]:
    return {"type": "X509CertificateName", "value": dn}


def thumbprint_secret(value: str) -> dict[str, str]:
    return {"type": "X509CertificateThumbprint", "value": value}


def registry_client(client_id: str, *secrets: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "allowed_grant_types": ["client_credentials"],
        "allowed_scopes": fields.pop("allowed_scopes", ["api1"]),
        "secrets": list(secrets),
        **fields,
    }


def echoed_headers(body: dict[str, Any]) -> dict[str, list[str]]:
    """Headers the echo upstream received, by lowercased name."""
    result: dict[str, list[str]] = {}
    for key, value in body["headers"]:
        result.setdefault(key.lower(), []).append(value)
    return result


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run the tests on uvloop, the loop `mtls-gateway serve` runs on.

    uvloop differs from asyncio where it matters here (its TLS transports are
    not asyncio.Transport subclasses, its SSL shutdown differs): a bug that
    only shows on uvloop is a production bug.
    """
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
