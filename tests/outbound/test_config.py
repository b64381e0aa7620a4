"""The ``outbound:`` section: what it builds, and every mistake as ``file:key: message``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli.devpki import init_dev_pki
from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.config.values import BindAddress
from gateway.oauth.keys import generate_signing_key
from gateway.outbound.config import OutboundTokenConfig
from gateway.runtime import assemble
from tests.spec_example import write_spec_example

ROOT = Path(__file__).resolve().parents[2]
PIN = "ab" * 32


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SPEC's config over a dev PKI (pki/client.pem, client.key, ca.pem exist)."""
    return write_spec_example(tmp_path_factory.mktemp("outbound-config") / "conf")


def _outbound(**change: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "bind": "127.0.0.1:15001",
        "destination": "https://api.partner.example",
        "tls": {"cert": "pki/client.pem", "key": "pki/client.key", "ca": "pki/ca.pem"},
        "token": {"issuer": "https://idp.example", "client_id": "mtls.client", "scopes": ["api1"]},
    }
    item.update(change)
    return {k: v for k, v in item.items() if v is not None}


def _write(spec: Path, outbound: Any, name: str) -> Path:
    data = yaml.safe_load(spec.read_text())
    data["outbound"] = outbound
    path = spec.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value.problems


def test_a_full_outbound_listener(spec: Path) -> None:
    path = _write(spec, [_outbound(connect_timeout=2, timeout=30)], "full")
    config = load_config(path, env={})
    base = path.parent
    (ob,) = config.outbound
    assert ob.bind == BindAddress("127.0.0.1", 15001)
    assert ob.allow_non_loopback is False
    assert (ob.connect_timeout, ob.timeout) == (2.0, 30.0)
    assert ob.tls.cert == base / "pki" / "client.pem"
    assert ob.tls.ca == base / "pki" / "ca.pem"
    assert ob.tls.server_sha256 == ()
    (route,) = ob.routes  # `destination:` is one route for "/"
    assert (route.prefix, route.host, route.destination) == (
        "/",
        None,
        "https://api.partner.example",
    )
    assert route.token == OutboundTokenConfig(None, "https://idp.example", "mtls.client", ("api1",))


def test_inbound_only_configs_have_no_outbound(spec: Path) -> None:
    assert load_config(spec, env={}).outbound == ()


def test_routes_inherit_merge_or_drop_the_token_settings(spec: Path) -> None:
    routes = [
        {"prefix": "/orders", "destination": "https://orders.example"},
        {"prefix": "/stock", "destination": "https://stock.example", "token": {"scopes": "stock"}},
        {
            "prefix": "/",
            "host": "Other.Example",
            "destination": "https://other.example/base/",
            "token": {"token_endpoint": "https://other-idp.example/token"},
        },
        {"prefix": "/public", "destination": "https://public.example", "token": False},
    ]
    path = _write(spec, [_outbound(destination=None, routes=routes)], "routes")
    orders, stock, other, public = load_config(path, env={}).outbound[0].routes
    assert orders.token == OutboundTokenConfig(
        None, "https://idp.example", "mtls.client", ("api1",)
    )
    assert stock.token == OutboundTokenConfig(
        None, "https://idp.example", "mtls.client", ("stock",)
    )
    # Naming the endpoint directly replaces the inherited issuer (not both).
    assert other.token == OutboundTokenConfig(
        "https://other-idp.example/token", None, "mtls.client", ("api1",)
    )
    assert (other.host, other.destination) == ("other.example", "https://other.example/base")
    assert public.token is None


def test_non_loopback_bind_is_refused(spec: Path) -> None:
    (problem,) = _problems(_write(spec, [_outbound(bind="0.0.0.0:15001")], "open"))
    assert problem.startswith(
        f"{spec.parent / 'open.yaml'}:outbound[0].bind: 0.0.0.0 is not a loopback"
    )
    assert "allow_non_loopback" in problem


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:15001", "127.0.0.2:15001", "[::1]:15001", "localhost:0"]
)
def test_loopback_binds_pass(spec: Path, bind: str) -> None:
    load_config(_write(spec, [_outbound(bind=bind)], "loop"), env={})


def test_non_loopback_bind_when_allowed(spec: Path) -> None:
    path = _write(spec, [_outbound(bind="0.0.0.0:15001", allow_non_loopback=True)], "allowed")
    assert load_config(path, env={}).outbound[0].allow_non_loopback is True


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"tls": {"cert": "pki/nope.pem", "key": "pki/client.key"}}, "tls.cert", "file not found"),
        ({"tls": None}, "tls", "required"),
        ({"tls": {"key": "pki/client.key"}}, "tls.cert", "required"),
        (
            {"tls": {"cert": "pki/client.pem", "key": "pki/client.key", "server_sha256": "xyz"}},
            "tls.server_sha256",
            "64 hex digits",
        ),
        ({"destination": "http://api.example"}, "destination", "expected a https URL"),
        ({"destination": None}, "<listener>", "exactly one of destination and routes"),
        ({"routes": [{"destination": "https://a.example"}]}, "<listener>", "exactly one of"),
        ({"token": {"client_id": "x"}}, "token", "exactly one of token_endpoint and issuer"),
        ({"token": {"issuer": "https://idp.example"}}, "token.client_id", "required"),
        (
            {"token": {"issuer": "https://i", "client_id": "x", "bogus": 1}},
            "token.bogus",
            "unknown key",
        ),
        ({"timeout": 0}, "timeout", "positive number"),
        ({"bind": "127.0.0.1:8443"}, "<list>", "two listeners bind the same address"),
        ({"colour": "blue"}, "colour", "unknown key"),
    ],
)
def test_single_problems(
    spec: Path, tmp_path: Path, change: dict[str, Any], key: str, message: str
) -> None:
    item = _outbound()
    for name, value in change.items():
        if value is None:
            item.pop(name, None)
        else:
            item[name] = value
    path = _write(spec, [item], f"bad-{tmp_path.name}")
    problems = _problems(path)
    where = {"<listener>": "outbound[0]", "<list>": "outbound"}.get(key, f"outbound[0].{key}")
    assert any(p.startswith(f"{path}:{where}: ") and message in p for p in problems), problems


def test_route_problems_name_the_route(spec: Path) -> None:
    routes = [
        {"prefix": "api", "destination": "https://a.example"},
        {"prefix": "/b", "destination": "https://b.example", "host": "b.example:443"},
        {"prefix": "/c", "destination": "https://c.example"},
        {"prefix": "/c/", "destination": "https://c2.example"},
    ]
    path = _write(spec, [_outbound(destination=None, routes=routes)], "bad-routes")
    problems = _problems(path)
    assert f"{path}:outbound[0].routes[0].prefix: must start with '/'" in problems
    assert any(p.startswith(f"{path}:outbound[0].routes[1].host: ") for p in problems)
    assert f"{path}:outbound[0].routes: two routes share one prefix and host" in problems


def test_outbound_must_be_a_list(spec: Path) -> None:
    path = _write(spec, _outbound(), "not-a-list")
    assert _problems(path) == [
        f"{path}:outbound: expected a list of outbound listeners, got a mapping"
    ]


def test_unusable_certificate_is_named_when_assembled(spec: Path) -> None:
    """Files that exist but hold no usable material fail `check`/start, naming the key."""
    (spec.parent / "garbage.pem").write_text("not a certificate\n")
    path = _write(
        spec,
        [_outbound(tls={"cert": "garbage.pem", "key": "pki/client.key", "ca": "garbage.pem"})],
        "garbage",
    )
    with pytest.raises(ConfigError) as info:
        assemble(load_config(path, env={}))
    problems = info.value.problems
    assert any(p.startswith(f"{path}:outbound[0].tls.cert: cannot read") for p in problems), (
        problems
    )
    assert any(p.startswith(f"{path}:outbound[0].tls.ca: cannot use") for p in problems), problems


def test_key_that_does_not_match_the_certificate(spec: Path) -> None:
    path = _write(
        spec,
        [_outbound(tls={"cert": "pki/client.pem", "key": "pki/server.key", "ca": "pki/ca.pem"})],
        "mismatch",
    )
    with pytest.raises(ConfigError) as info:
        assemble(load_config(path, env={}))
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:outbound[0].tls.cert: cannot use ")


def test_env_override_reaches_an_outbound_listener(spec: Path) -> None:
    path = _write(spec, [_outbound()], "env")
    config = load_config(path, env={"MTLS_GATEWAY_OUTBOUND__0__TIMEOUT": "7"})
    assert config.outbound[0].timeout == 7.0


def test_example_config_documents_a_working_outbound_listener(tmp_path: Path) -> None:
    """config/gateway.example.yaml, verbatim in a quickstart layout, with its outbound section."""
    init_dev_pki(tmp_path / "pki")
    (tmp_path / "keys").mkdir()
    generate_signing_key(tmp_path / "keys" / "signing.pem")
    shutil.copy(ROOT / "config" / "clients.example.yaml", tmp_path / "clients.yaml")
    shutil.copy(ROOT / "config" / "gateway.example.yaml", tmp_path / "gateway.yaml")
    config = load_config(tmp_path / "gateway.yaml", env={})
    (ob,) = config.outbound
    assert ob.bind == BindAddress("127.0.0.1", 15001)
    assert ob.tls.cert == tmp_path / "pki" / "client.pem"
    (route,) = ob.routes
    assert route.token is not None and route.token.client_id == "mtls.client"
    gateway = assemble(config)
    assert len(gateway.outbound) == 1
