"""``mtls-gateway check`` findings beyond load errors, each through the real CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import load_config
from gateway.runtime import assemble
from gateway.server import start_gateway
from tests.cli.test_main import error_lines, run_cli
from tests.registry.conftest import RedisServer
from tests.registry.conftest import redis_server as redis_server  # the fixture
from tests.spec_example import write_spec_example


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return write_spec_example(tmp_path / "conf")


def _variant(spec: Path, change: dict[str, Any]) -> Path:
    data = yaml.safe_load(spec.read_text())
    for key, value in change.items():
        data[key] = value
    spec.write_text(yaml.safe_dump(data))
    return spec


def _routes(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"routes": list(routes)}


def warnings_of(stderr: str) -> list[str]:
    return [
        line.removeprefix("mtls-gateway: warning: ")
        for line in stderr.splitlines()
        if line.startswith("mtls-gateway: warning: ")
    ]


def test_upstream_port_out_of_range(spec: Path) -> None:
    _variant(spec, _routes({"prefix": "/", "upstream": "http://127.0.0.1:80800"}))
    assert error_lines(run_cli("check", "--config", spec)) == [
        f"{spec}:routes[0].upstream: port out of range (0-65535) in 'http://127.0.0.1:80800'"
    ]


def test_route_clients_must_exist_in_a_local_registry(spec: Path) -> None:
    _variant(
        spec,
        _routes(
            {"prefix": "/", "upstream": "http://127.0.0.1:8080", "clients": ["mtls.client"]},
            {"prefix": "/orders", "upstream": "http://127.0.0.1:8080", "clients": ["ordres"]},
        ),
    )
    lines = error_lines(run_cli("check", "--config", spec))
    assert lines == [
        f"{spec}:routes[1].clients: no client 'ordres' in yaml:{spec.parent}/clients.yaml"
    ]


def test_route_clients_missing_from_a_remote_registry_is_a_warning(
    spec: Path, redis_server: RedisServer
) -> None:
    _variant(
        spec,
        {
            "registry": {"kind": "redis", "url": redis_server.url},
            **_routes({"prefix": "/", "upstream": "http://127.0.0.1:8080", "clients": ["later"]}),
        },
    )
    result = run_cli("check", "--config", spec)
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_of(result.stderr)
    assert warning.startswith(f"{spec}:routes[0].clients: no client 'later' in ")


def test_a_trailing_slash_twin_is_a_duplicate_route(spec: Path) -> None:
    # /api (none) first and /api/ (client) second: /api/x was served without a certificate.
    _variant(
        spec,
        _routes(
            {"prefix": "/api", "upstream": "http://127.0.0.1:8080", "auth": "none"},
            {"prefix": "/api/", "upstream": "http://127.0.0.1:8080", "auth": "client"},
        ),
    )
    assert error_lines(run_cli("check", "--config", spec)) == [
        f"{spec}:routes: duplicate route prefix: /api and /api/ "
        "(one route: a trailing slash makes no difference)"
    ]


@pytest.mark.parametrize("prefix", ["/a/../b", "/a//b", "/caf%C3%A9", "/x?y=1", "/a/./b"])
def test_a_prefix_no_request_can_match_is_refused(spec: Path, prefix: str) -> None:
    _variant(spec, _routes({"prefix": prefix, "upstream": "http://127.0.0.1:8080"}))
    (line,) = error_lines(run_cli("check", "--config", spec))
    assert line.startswith(f"{spec}:routes[0].prefix: {prefix!r} matches no request: ")


def test_gateway_endpoints_under_a_route_prefix_are_a_warning(spec: Path) -> None:
    _variant(
        spec,
        _routes(
            {"prefix": "/", "upstream": "http://127.0.0.1:8080"},
            {"prefix": "/connect", "upstream": "http://127.0.0.1:8080"},
        ),
    )
    result = run_cli("check", "--config", spec)
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_of(result.stderr)
    assert warning.startswith(f"{spec}:routes[1].prefix: /connect/token, /connect/introspect")


def test_admin_off_loopback_and_a_readable_tls_key_are_warnings(spec: Path) -> None:
    _variant(spec, {"admin": {"bind": "0.0.0.0:9901"}})
    key = spec.parent / "pki" / "server.key"
    key.chmod(0o644)
    result = run_cli("check", "--config", spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{spec}: ok")
    assert warnings_of(result.stderr) == [
        f"{spec}:admin.bind: 0.0.0.0:9901 is not loopback: /metrics, /readyz and /healthz "
        "answer without authentication to anyone who reaches it",
        f"{spec}:listeners[0].tls.key: permissions 0644 let group/other read the private key "
        f"{key}; chmod 600 it",
    ]
    key.chmod(0o600)
    _variant(spec, {"admin": {"bind": "127.0.0.1:9901"}})
    clean = run_cli("check", "--config", spec)
    assert clean.returncode == 0 and clean.stderr == ""


async def test_admin_null_disables_the_admin_port(spec: Path) -> None:
    data = yaml.safe_load(spec.read_text())
    data["admin"] = None
    data["listeners"][0]["bind"] = "127.0.0.1:0"
    spec.write_text(yaml.safe_dump(data))
    result = run_cli("check", "--config", spec)
    assert result.returncode == 0, result.stderr
    assert "no admin port" in result.stdout
    config = load_config(spec, env={})
    assert config.admin.bind is None
    running = await start_gateway(assemble(config))
    try:
        assert running.admin_address is None
        assert running.listener_ports[0] > 0
    finally:
        await running.stop(grace=0.1)


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
    ids=["text", "broken-pem"],
)
def test_a_client_ca_that_is_not_certificates_is_one_line(spec: Path, content: bytes) -> None:
    bad = spec.parent / "pki" / "not-a-ca.pem"
    bad.write_bytes(content)
    data = yaml.safe_load(spec.read_text())
    data["listeners"][0]["tls"]["client_ca"] = "pki/not-a-ca.pem"
    spec.write_text(yaml.safe_dump(data))
    (line,) = error_lines(run_cli("check", "--config", spec))
    assert line == (
        f"{spec}:listeners[0].tls.client_ca: cannot read {bad}: not a PEM or DER certificate file"
    )
    assert "ParseError" not in line
