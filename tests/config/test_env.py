"""gateway/config/env.py: ``MTLS_GATEWAY_*`` overrides, and their problems named by variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.config.values import BindAddress
from tests.spec_example import config_problems, config_with


def test_env_overrides(spec_config: Path) -> None:
    config = load_config(
        spec_config,
        env={
            "MTLS_GATEWAY_REGISTRY__KIND": "redis",
            "MTLS_GATEWAY_REGISTRY__URL": "redis://redis.internal:6380/2",
            "MTLS_GATEWAY_LISTENERS__0__BIND": "0.0.0.0:9443",
            "MTLS_GATEWAY_TOKENS__LIFETIME": "60",
            "MTLS_GATEWAY_LISTENERS__0__TLS__CLIENT_CERTS": "required",
            "MTLS_GATEWAY_ROUTES__0__SCOPES": "[api1, api2]",
            "MTLS_GATEWAY_ROUTES__0__AUTH": "token",
            "OTHER_VARIABLE": "ignored",
        },
    )
    assert config.registry.kind == "redis"
    assert config.registry.url == "redis://redis.internal:6380/2"
    assert config.listeners[0].bind == BindAddress("0.0.0.0", 9443)
    assert config.tokens.lifetime == 60
    assert isinstance(config.tokens.lifetime, int)
    assert config.listeners[0].tls.client_certs == "required"
    assert config.routes[0].scopes == ("api1", "api2")


def test_env_overrides_come_from_the_process_environment(
    spec_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTLS_GATEWAY_ADMIN__BIND", "127.0.0.1:19901")
    assert load_config(spec_config).admin.bind == BindAddress("127.0.0.1", 19901)


def test_env_override_under_an_empty_mapping(spec_config: Path, tmp_path: Path) -> None:
    # "admin:" with its keys commented out is null in YAML.
    path = config_with(spec_config, tmp_path, {"admin": None})
    config = load_config(path, env={"MTLS_GATEWAY_ADMIN__BIND": "127.0.0.1:19902"})
    assert config.admin.bind == BindAddress("127.0.0.1", 19902)


def test_env_override_problems(spec_config: Path) -> None:
    problems = config_problems(
        spec_config,
        env={
            "MTLS_GATEWAY_LISTENERS__3__BIND": "127.0.0.1:1",
            "MTLS_GATEWAY_LISTENERS__FIRST__BIND": "127.0.0.1:1",
            "MTLS_GATEWAY_ISSUER__HOST": "x",
            "MTLS_GATEWAY_TOKENS____LIFETIME": "1",
            "MTLS_GATEWAY_TOKENS__LIFETIME": "soon",
        },
    )
    assert problems == [
        "env:MTLS_GATEWAY_ISSUER__HOST: cannot override inside a string",
        "env:MTLS_GATEWAY_LISTENERS__3__BIND: no list item '3' to override",
        "env:MTLS_GATEWAY_LISTENERS__FIRST__BIND: no list item 'first' to override",
        "env:MTLS_GATEWAY_TOKENS____LIFETIME: malformed variable name",
        f"{spec_config}:tokens.lifetime: expected a positive whole number, got 'soon'",
    ]


def test_an_env_variable_typo_is_reported_as_the_variable(spec_config: Path) -> None:
    problems = config_problems(
        spec_config,
        env={"MTLS_GATEWAY_LISTENERS__0__BND": "0.0.0.0:1", "MTLS_GATEWAY_ADMN__BIND": "x:1"},
    )
    assert problems == [
        "env:MTLS_GATEWAY_ADMN__BIND: unknown key admn (expected one of: admin, headers, "
        "issuer, limits, listeners, logging, outbound, registry, routes, tokens)",
        "env:MTLS_GATEWAY_LISTENERS__0__BND: unknown key listeners[0].bnd (expected one of: "
        "bind, forwarded_client_cert, http2, proxy_protocol, public_url, tls)",
    ]
