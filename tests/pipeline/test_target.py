"""Request targets split as routing sees them (RFC 9112 §3.2)."""

from __future__ import annotations

import pytest

from gateway.pipeline.target import split_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1&y", ("/a/b", "x=1&y")),
        ("/a%2Fb", ("/a/b", "")),
        ("/a%20b?q=%20", ("/a b", "q=%20")),
        ("/%ff", ("/%ff", "")),  # not UTF-8: left as sent, as aiohttp/yarl did
        ("http://host:80/p?q", ("/p", "q")),
        ("http://host", ("/", "")),
        ("*", ("*", "")),
    ],
)
def test_targets(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected
