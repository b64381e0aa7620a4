"""Upstream URLs parsed once (gateway/upstream/origin.py)."""

from __future__ import annotations

import pytest

from gateway.upstream import parse_origin


@pytest.mark.parametrize(
    ("url", "endpoint", "base_path", "authority"),
    [
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080), "", "127.0.0.1:8080"),
        ("https://api.example/", ("https", "api.example", 443), "", "api.example"),
        ("http://api.example/v1/", ("http", "api.example", 80), "/v1", "api.example"),
        ("https://[::1]:8443/x", ("https", "::1", 8443), "/x", "[::1]:8443"),
        ("https://u:p%40ss@h.example:9/", ("https", "h.example", 9), "", "h.example:9"),
    ],
)
def test_parts(url: str, endpoint: tuple[str, str, int], base_path: str, authority: str) -> None:
    origin = parse_origin(url)
    assert origin.endpoint == endpoint
    assert origin.base_path == base_path
    # The Host field: as written, never the userinfo (RFC 9110 §7.2).
    assert origin.authority == authority


def test_userinfo_becomes_basic_credentials() -> None:
    assert parse_origin("https://u:p%40ss@h.example/").authorization == "Basic dTpwQHNz"
    assert parse_origin("https://h.example/").authorization is None


def test_origins_are_equal_whatever_the_spelling_of_the_authority() -> None:
    assert parse_origin("https://h.example") == parse_origin("https://h.example:443")
