"""Routing: no request reaches a route whose policy it did not pass.

Two routes to one byte-recording upstream: ``/public`` (``auth: none``) and
``/private`` (``auth: client``).  Every request here comes without a client
certificate, so the one thing that must never happen is a request reaching
the upstream under ``/private`` (or one that an upstream would resolve to
``/private``).  Dot segments, ``%2F`` and backslashes: tests/test_proxy.py.
"""

from __future__ import annotations

import pytest

from gateway.paths import ambiguous_dot_segment
from tests.conftest import MakeGateway
from tests.security.conftest import RecordingUpstream, recording_gateway
from tests.test_proxy import RawConnection


def request(target: str, host: str = "localhost") -> str:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n"


# target -> (status for an anonymous caller, path the upstream receives, if any)
TARGETS: dict[str, tuple[int, str | None]] = {
    # Absolute-form (RFC 9112 §3.2.2): its authority must be the Host
    # (tests/security/test_host.py); the path is routed like any other.
    "https://evil/private/x": (400, None),
    "http://localhost/private/x": (401, None),
    "https://user@localhost/private/x": (400, None),
    "ftp://localhost/private/x": (401, None),
    "https://localhost/public/..%2Fprivate/x": (401, None),
    "https://localhost:443/public/x": (200, "/public/x"),
    "https://localhost/public@/private": (404, None),
    # "@" in the path is a character, not an authority.
    "/public/@evil/x": (200, "/public/@evil/x"),
    "/@/private": (404, None),
    "//evil@localhost/private": (404, None),
    # Decoded exactly once: "%25" stays a literal "%" for the upstream.
    "/public/%252e%252e/private": (200, "/public/%252e%252e/private"),
    "/public/..%252Fprivate": (200, "/public/..%252Fprivate"),
    # Overlong UTF-8 for "." and "/" is not UTF-8: it stays literal text.
    "/public/%c0%ae%c0%ae/private": (200, "/public/%25c0%25ae%25c0%25ae/private"),
    "/public/..%c0%afprivate": (200, "/public/..%25c0%25afprivate"),
    "/public/%e0%80%ae%e0%80%ae/private": (200, "/public/%25e0%2580%25ae%25e0%2580%25ae/private"),
    # Segments that Tomcat/Spring (";" parameters) or Windows (trailing dots
    # and spaces) would read as "..": refused, never forwarded.
    "/public/..;/private": (400, None),
    "/public/.;/private": (400, None),
    "/public/%2e%2e;x/private": (400, None),
    "/public/..%3B/private": (400, None),
    "/public/.../private": (400, None),
    "/public/..%20/private": (400, None),
    "/public/..%2e/private": (400, None),
    # Encoded "?" and "#" are path characters: the dot segments after them count.
    "/public/x%3F/../../private": (401, None),
    "/public/x%23/../../private": (401, None),
    # A fragment is never part of the path.
    "/public/x#/../../private": (200, "/public/x"),
    "/public/" + "../" * 500 + "private": (401, None),
    # Prefixes are case-sensitive, as the paths of most upstreams are.
    "/PRIVATE/x": (404, None),
    # On no route as written, on /private for Tomcat: ambiguous (gateway/paths.py).
    "/private;x/y": (400, None),
    # Raw (unencoded) non-ASCII bytes in the request line: the parser refuses them.
    "/public/\xc0\xae\xc0\xae/private": (400, None),
}


@pytest.mark.parametrize("target", list(TARGETS))
async def test_odd_targets_never_reach_the_private_route(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, target: str
) -> None:
    status, forwarded = TARGETS[target]
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(request(target))
    finally:
        await conn.close()
    assert response.status == status, response.body
    assert [r.target for r in recording_upstream.requests] == ([forwarded] if forwarded else [])
    # The gateway always names the upstream itself in Host.
    for r in recording_upstream.requests:
        assert r.values("Host") == [f"127.0.0.1:{recording_upstream.port}"]


# Host value -> status (and X-Forwarded-Host the upstream gets when accepted)
HOSTS: dict[str, tuple[int, str | None]] = {
    "localhost:1234": (200, "localhost:1234"),
    "[::1]:443": (200, "[::1]:443"),
    "127.0.0.1": (200, "127.0.0.1"),
    "": (200, ""),  # allowed by RFC 9112 §3.2 when the target has no authority
    # RFC 9112 §3.2: an invalid Host is a 400, never relayed as X-Forwarded-Host.
    "user@localhost": (400, None),
    "localhost/private": (400, None),
    "../../private": (400, None),
    "a b": (400, None),
    "a.com, evil.com": (400, None),
    "<script>": (400, None),
    "[::1": (400, None),
    "localhost:99x": (400, None),
}


@pytest.mark.parametrize("host", list(HOSTS))
@pytest.mark.parametrize("path", ["/public/x", "/private/x"])
async def test_odd_host_headers(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, host: str, path: str
) -> None:
    status, forwarded_host = HOSTS[host]
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(request(path, host))
    finally:
        await conn.close()
    if path.startswith("/private") and status == 200:
        status = 401  # a valid Host changes nothing about the policy
    assert response.status == status, response.body
    if status == 200:
        (forwarded,) = recording_upstream.requests
        assert forwarded.target == path
        assert forwarded.values("X-Forwarded-Host") == [forwarded_host]
        assert forwarded.values("Host") == [f"127.0.0.1:{recording_upstream.port}"]
    else:
        assert recording_upstream.requests == []


@pytest.mark.parametrize(
    ("path", "ambiguous"),
    [
        ("/a/b.txt", False),
        ("/a/.hidden/x", False),
        ("/a/x./y", False),
        ("/a/./b", False),
        ("/a/../b", False),
        ("/a/b;jsessionid=1", False),
        ("/a/..;/b", True),
        ("/a/.;x/b", True),
        ("/a/.../b", True),
        ("/a/.. /b", True),
        ("/a/. ./b", True),
        ("/a/..", False),
        ("/a/..;", True),
    ],
)
def test_ambiguous_dot_segments(path: str, ambiguous: bool) -> None:
    assert ambiguous_dot_segment(path) is ambiguous
