"""gateway/config/values.py: the value parsers, here the ``host:port`` of every bind."""

from __future__ import annotations

import pytest

from gateway.config.values import BindAddress, parse_bind


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", BindAddress("127.0.0.1", 8443)),
        ("0.0.0.0:0", BindAddress("0.0.0.0", 0)),
        ("localhost:9901", BindAddress("localhost", 9901)),
        ("gateway-1.internal:443", BindAddress("gateway-1.internal", 443)),
        ("[::1]:8443", BindAddress("::1", 8443)),
        ("::1:8443", BindAddress("::1", 8443)),
    ],
)
def test_good_binds(text: str, expected: BindAddress) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8443", "expected host:port"),
        ("127.0.0.1:", "expected host:port"),
        ("127.0.0.1:http", "expected host:port"),
        ("127.0.0.1:65536", "port out of range"),
        (":8443", "missing host"),
        ("[]:8443", "missing host"),
        ("bad_host:1", "invalid host"),
        ("my host-1:8443", "invalid host"),  # a label with a space and a hyphen
        ("host..example:1", "invalid host"),
        ("host.:1", "invalid host"),
    ],
)
def test_bad_binds(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bind(text)
