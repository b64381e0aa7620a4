"""gateway/paths.py: the lenient upstream reading and when it changes the route."""

from __future__ import annotations

import pytest

from gateway.paths import ambiguous_dot_segment, readings_disagree, upstream_reading


@pytest.mark.parametrize(
    ("path", "reading"),
    [
        ("/a/b", "/a/b"),
        ("/private;jsessionid=x/y", "/private/y"),
        ("/private;/y", "/private/y"),
        ("/private./y", "/private/y"),
        ("/private. ./y", "/private/y"),
        ("/a/./b/../c", "/a/./b/../c"),  # dot segments stay dot segments
        ("/x/\u2025/private", "/x/../private"),
        ("/\uff0fprivate", "//private"),
        ("/\uff50rivate", "/private"),  # full-width "p"
        ("/files/wait\u2026", "/files/wait"),
    ],
)
def test_upstream_reading(path: str, reading: str) -> None:
    assert upstream_reading(path) == reading


ROUTES = ("/private", "/")


def find(path: str) -> str | None:
    for prefix in ROUTES:
        if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
            return prefix
    return None


@pytest.mark.parametrize(
    ("path", "disagree"),
    [
        ("/private;x/y", True),
        ("/private./y", True),
        ("/x/\u2025/private/y", True),
        ("/files/a.", False),
        ("/api;v=2/cars", False),
        ("/private/cars;color=red", False),
        ("/privateer;x", False),
        ("/plain/path", False),
    ],
)
def test_readings_disagree_only_when_the_route_changes(path: str, disagree: bool) -> None:
    assert readings_disagree(path, find) is disagree


def test_nfkc_twins_of_ambiguous_dot_segments() -> None:
    assert ambiguous_dot_segment("/a/\u2025;/b")
    assert ambiguous_dot_segment("/a/\u2024\u2024\u2024/b")
    assert not ambiguous_dot_segment("/a/caf\u00e9/b")
