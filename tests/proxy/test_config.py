"""gateway/proxy/config.py: ``routes:`` and the identity ``headers:``, each problem one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_config
from gateway.proxy.config import HeaderNames
from tests.spec_example import config_problems, config_with


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"routes": "everything"}, "routes: required: a list of at least one route"),
        (
            {"routes": [{"prefix": "/api", "upstream": "http://127.0.0.1:1"}] * 2},
            "routes: duplicate route prefix: /api",
        ),
        (
            {"headers": {"client_id": "X Client"}},
            "headers.client_id: not a valid header name: 'X Client'",
        ),
        ({"headers": {"subject": "x-client-id"}}, "headers: two identity headers share one name"),
    ],
)
def test_single_problems(
    spec_config: Path, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = config_with(spec_config, tmp_path, change)
    (reported,) = config_problems(path)
    assert reported.startswith(f"{path}:{problem}")


def test_identity_headers_default_and_can_be_renamed_or_turned_off(
    spec_config: Path, tmp_path: Path
) -> None:
    assert load_config(spec_config, env={}).headers == HeaderNames()
    headers = {"client_id": "X-Caller", "xfcc": False, "client_cert": "Client-Cert"}
    loaded = load_config(config_with(spec_config, tmp_path, {"headers": headers}), env={})
    assert loaded.headers.client_id == "X-Caller"
    assert loaded.headers.xfcc is None
    assert loaded.headers.client_cert == "Client-Cert"
    assert loaded.headers.subject == HeaderNames().subject


# --------------------------------------------------------------------------- HTTP/2 upstreams (issue 17)


def test_upstream_protocol_is_http1_by_default(spec_config: Path) -> None:
    config = load_config(spec_config, env={})
    assert all(route.upstream_protocol == "http1" for route in config.routes)


@pytest.mark.parametrize(
    ("upstream", "protocol"),
    [("http://127.0.0.1:9000", "h2c"), ("https://grpc.internal", "h2"), ("http://x", "http1")],
)
def test_upstream_protocol(spec_config: Path, tmp_path: Path, upstream: str, protocol: str) -> None:
    route = {"prefix": "/grpc", "upstream": upstream, "upstream_protocol": protocol}
    path = config_with(spec_config, tmp_path, {"routes": [route]})
    assert load_config(path, env={}).routes[0].upstream_protocol == protocol


@pytest.mark.parametrize(
    ("upstream", "protocol", "problem"),
    [
        (
            "https://grpc.internal",
            "h2c",
            "h2c is HTTP/2 in cleartext: use an http:// upstream, or h2",
        ),
        ("http://127.0.0.1:9000", "h2", "h2 is HTTP/2 over TLS: use an https:// upstream, or h2c"),
        ("http://127.0.0.1:9000", "http2", "expected one of http1, h2c, h2, got 'http2'"),
    ],
)
def test_upstream_protocol_problems(
    spec_config: Path, tmp_path: Path, upstream: str, protocol: str, problem: str
) -> None:
    route = {"prefix": "/grpc", "upstream": upstream, "upstream_protocol": protocol}
    path = config_with(spec_config, tmp_path, {"routes": [route]})
    (reported,) = config_problems(path)
    assert reported == f"{path}:routes[0].upstream_protocol: {problem}"
