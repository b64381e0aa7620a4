"""Route prefixes that load but could never do what they say.

Routing compares the decoded, dot-segment-free request path (proxy.normalise_path)
with each prefix minus its trailing slash, longest first.  So ``/api`` and
``/api/`` are one route: the first listed served ``/api/x`` and the second
was dead, whatever its ``auth`` said.  And a prefix that is not in that
normal form (``/a/../b``, ``/a//b``, ``/caf%C3%A9``, ``/x?y``) matches no
request at all.
"""

from __future__ import annotations

import posixpath

from gateway.oauth import paths

GATEWAY_PATHS = (
    paths.OPENID_CONFIGURATION,
    paths.OAUTH_SERVER_METADATA,
    paths.JWKS,
    paths.TOKEN,
    paths.INTROSPECT,
    paths.MTLS_TOKEN,
    paths.MTLS_INTROSPECT,
)


def routing_key(prefix: str) -> str:
    """The form the route table compares: no trailing slash, except ``/``."""
    return prefix.rstrip("/") or "/"


def dead_prefix(prefix: str) -> str | None:
    """Why no request path can ever match ``prefix``, or None."""
    key = routing_key(prefix)
    if any(ch in key for ch in "?#"):
        return "a query or fragment is never part of the routed path"
    if "%" in key:
        return "prefixes are matched against the decoded path: write the characters, not %XX"
    if "\\" in key or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        return "paths with a backslash or control character are refused before routing"
    normal = posixpath.normpath(key)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal != key:
        return (
            f"request paths are normalised first (dot segments, repeated slashes): use {normal!r}"
        )
    return None


def shadowed_gateway_paths(prefix: str) -> list[str]:
    """The gateway's own endpoints under ``prefix``: answered before any route."""
    key = routing_key(prefix)
    if key == "/":
        return []
    return [p for p in GATEWAY_PATHS if p == key or p.startswith(key + "/")]
