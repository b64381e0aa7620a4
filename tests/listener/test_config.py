"""gateway/listener/config.py: listeners, TLS, PROXY protocol, forwarded certificates, limits.

Load-balancer and SPIFFE keys are parsed, and unsafe values refused as
``file:key: message``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from tests.conftest import write_config
from tests.pki import Pki
from tests.spec_example import config_problems, config_with

# --------------------------------------------------------------------------- listeners


def test_listeners_must_be_a_list(spec_config: Path, tmp_path: Path) -> None:
    path = config_with(spec_config, tmp_path, {"listeners": {"bind": "127.0.0.1:1"}})
    assert config_problems(path) == [f"{path}:listeners: required: a list of at least one listener"]


def test_duplicate_listener_binds(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    path = config_with(spec_config, tmp_path, {"listeners": data["listeners"] * 2})
    assert config_problems(path) == [f"{path}:listeners: two listeners bind the same address"]


def test_pinned_certs_only_is_enough_trust(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    tls = data["listeners"][0]["tls"]
    del tls["client_ca"]
    tls["pinned_certs"] = ["pki/self-signed-client.pem", "pki/gone.pem"]
    path = config_with(spec_config, tmp_path, {"listeners": data["listeners"]})
    (problem,) = config_problems(path)
    assert problem.startswith(f"{path}:listeners[0].tls.pinned_certs[1]: file not found: ")


# --------------------------------------------------------------------------- load balancers and SPIFFE


def _load(tmp_path: Path, pki: Pki, **listener: Any) -> Any:
    tls = listener.pop("tls", None)
    config, _ = write_config(
        tmp_path,
        pki,
        clients=[],
        routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
        tls=tls,
        listener=listener,
    )
    return load_config(config, env={})


def _problems_without_file(tmp_path: Path, pki: Pki, **listener: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, pki, **listener)
    return [p.split(":", 1)[1] for p in exc.value.problems]


def test_keys_are_parsed(tmp_path: Path, pki: Pki) -> None:
    config = _load(
        tmp_path,
        pki,
        proxy_protocol={"trusted_sources": ["10.0.0.0/8", "192.0.2.7"]},
        forwarded_client_cert={"trusted_proxies": "127.0.0.1/32 ::1", "format": "envoy_xfcc"},
        tls={"spiffe_bundles": {"Example.ORG": str(pki.ca.cert_path)}},
    )
    listener = config.listeners[0]
    assert listener.proxy_protocol.required is True
    assert listener.proxy_protocol.trusted_sources == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert listener.forwarded_client_cert.format == "envoy_xfcc"
    assert listener.forwarded_client_cert.required is False
    assert listener.tls.spiffe_bundles == (("example.org", pki.ca.cert_path),)


def test_defaults_are_off(tmp_path: Path, pki: Pki) -> None:
    listener = _load(tmp_path, pki).listeners[0]
    assert listener.proxy_protocol is None
    assert listener.forwarded_client_cert is None
    assert listener.tls.spiffe_bundles == ()


def test_env_override(tmp_path: Path, pki: Pki) -> None:
    config, _ = write_config(
        tmp_path,
        pki,
        clients=[],
        routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
        listener={"proxy_protocol": {"trusted_sources": ["10.0.0.0/8"]}},
    )
    loaded = load_config(
        config, env={"MTLS_GATEWAY_LISTENERS__0__PROXY_PROTOCOL__REQUIRED": "false"}
    )
    assert loaded.listeners[0].proxy_protocol is not None
    assert loaded.listeners[0].proxy_protocol.required is False


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        (
            {"proxy_protocol": {"trusted_sources": ["0.0.0.0/0"]}},
            "listeners[0].proxy_protocol.trusted_sources: 0.0.0.0/0: trusting every address lets any caller forge this",
        ),
        (
            {"proxy_protocol": {"required": True}},
            "listeners[0].proxy_protocol.trusted_sources: required",
        ),
        (
            {"forwarded_client_cert": {"trusted_proxies": ["10.0.0.300/8"], "format": "nginx"}},
            "listeners[0].forwarded_client_cert.trusted_proxies: not an address or CIDR: '10.0.0.300/8'",
        ),
        (
            {"forwarded_client_cert": {"trusted_proxies": ["::/0"], "format": "nginx"}},
            "listeners[0].forwarded_client_cert.trusted_proxies: ::/0: trusting every address lets any caller forge this",
        ),
        (
            {"forwarded_client_cert": {"trusted_proxies": ["10.0.0.1"], "format": "haproxy"}},
            "listeners[0].forwarded_client_cert.format: expected one of rfc9440, envoy_xfcc, nginx, traefik, aws_alb, got 'haproxy'",
        ),
        (
            {
                "forwarded_client_cert": {
                    "trusted_proxies": ["10.0.0.1"],
                    "format": "nginx",
                    "header": "x",
                }
            },
            "listeners[0].forwarded_client_cert.header: unknown key (expected one of: format, required, trusted_proxies)",
        ),
        (
            {"tls": {"spiffe_bundles": {"bad domain": "x.pem"}}},
            "listeners[0].tls.spiffe_bundles.bad domain: not a SPIFFE trust domain: trust domain may hold only letters, digits, '.', '-' and '_' (SPIFFE-ID §2.1)",
        ),
    ],
)
def test_unsafe_or_malformed_values(
    tmp_path: Path, pki: Pki, listener: dict[str, Any], expected: str
) -> None:
    assert expected in _problems_without_file(tmp_path, pki, **listener)


def test_bundle_that_is_not_a_ca_is_refused(tmp_path: Path, pki: Pki) -> None:
    from gateway.app import build_gateway

    config = _load(
        tmp_path, pki, tls={"spiffe_bundles": {"example.org": str(pki.server.cert_path)}}
    )
    with pytest.raises(ConfigError) as exc:
        build_gateway(config)
    assert any(
        "spiffe_bundles.example.org" in p and "is not a CA certificate" in p
        for p in exc.value.problems
    )


# --------------------------------------------------------------------------- limits


def test_a_negative_upstream_idle_pool_is_refused(spec_config: Path, tmp_path: Path) -> None:
    path = config_with(spec_config, tmp_path, {"limits": {"upstream_idle_connections": -1}})
    assert config_problems(path) == [
        f"{path}:limits.upstream_idle_connections: expected a whole number >= 0, got -1"
    ]


def test_slow_peer_limits_have_defaults_and_are_read(spec_config: Path, tmp_path: Path) -> None:
    defaults = load_config(spec_config, env={}).limits
    assert (defaults.send_timeout, defaults.request_body_timeout) == (60.0, 30.0)
    assert defaults.request_body_min_rate == 500.0
    limits = {"send_timeout": 5, "request_body_timeout": 7.5, "request_body_min_rate": 0}
    loaded = load_config(config_with(spec_config, tmp_path, {"limits": limits}), env={}).limits
    assert (loaded.send_timeout, loaded.request_body_timeout) == (5, 7.5)
    assert loaded.request_body_min_rate == 0  # 0: request_body_timeout is a total


@pytest.mark.parametrize(
    ("key", "value"),
    [("send_timeout", 0), ("request_body_timeout", -1), ("request_body_min_rate", "fast")],
)
def test_a_bad_slow_peer_limit_is_one_line_naming_file_and_key(
    spec_config: Path, tmp_path: Path, key: str, value: object
) -> None:
    path = config_with(spec_config, tmp_path, {"limits": {key: value}})
    (problem,) = config_problems(path)
    assert problem.startswith(f"{path}:limits.{key}: ")


# --------------------------------------------------------------------------- HTTP/2 (issue 17)


def test_http2_is_on_by_default(spec_config: Path) -> None:
    config = load_config(spec_config, env={})
    assert all(listener.http2 for listener in config.listeners)


def test_http2_can_be_turned_off_per_listener(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    data["listeners"][0]["http2"] = False
    path = config_with(spec_config, tmp_path, {"listeners": data["listeners"]})
    assert load_config(path, env={}).listeners[0].http2 is False
