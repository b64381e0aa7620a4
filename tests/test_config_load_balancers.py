"""Config keys for load balancers and SPIFFE: parsed, and unsafe values refused as file:key: message."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from tests.conftest import write_config
from tests.pki import Pki


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


def _problems(tmp_path: Path, pki: Pki, **listener: Any) -> list[str]:
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
    assert expected in _problems(tmp_path, pki, **listener)


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
