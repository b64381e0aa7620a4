"""Routing by longest prefix, on the decoded, normalised path (gateway/paths.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.paths import (
    ambiguous_dot_segment,
    encode_path,
    normalise_path,
    readings_disagree,
    refused_character,
)
from gateway.proxy.config import RouteConfig

# Routing results kept per decoded path: bounded in count and in key length,
# so at most ~1 MiB of keys.
_CACHED_PATHS = 4096
_CACHED_PATH_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    prefix: str  # without trailing slash, except "/"

    def matches(self, path: str) -> bool:
        # Segment boundary: "/api" serves "/api" and "/api/x", never "/apiary".
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")

    def upstream_path(self, path: str) -> str:
        if self.config.strip_prefix and self.prefix != "/":
            return path[len(self.prefix) :] or "/"
        return path


class RouteTable:
    """The routes of one config, longest prefix first, with a cache of results per path."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        ordered = sorted(routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True)
        self._routes = tuple(Route(r, r.prefix.rstrip("/") or "/") for r in ordered)
        self._paths: dict[str, tuple[Route, str]] = {}

    def find(self, path: str) -> Route | None:
        for route in self._routes:
            if route.matches(path):
                return route
        return None

    def resolve(self, raw: str) -> tuple[Route, str]:
        """The route for a decoded request path, and the encoded upstream path; or GatewayError.

        The checks, normpath, the route search and quote() cost ~6 µs; they
        depend on the path alone and a table never changes (a reload builds
        a new one), so results are kept for short paths (refusals are not).
        """
        found = self._paths.get(raw)
        if found is not None:
            return found
        found = self._resolve(raw)
        if len(raw) <= _CACHED_PATH_LENGTH:
            if len(self._paths) >= _CACHED_PATHS:
                self._paths.clear()
            self._paths[raw] = found
        return found

    def _resolve(self, raw: str) -> tuple[Route, str]:
        # The rules and why: gateway/paths.py.
        if not raw.startswith("/"):
            # "OPTIONS *" (RFC 9112 §3.2.4) asks about the server, not a resource.
            raise GatewayError(404, "not_found", "no route for this path")
        if refused_character(raw):
            raise GatewayError(400, "invalid_request", "backslash or control character in path")
        if ambiguous_dot_segment(raw):
            raise GatewayError(400, "invalid_request", "ambiguous dot segment in path")
        if readings_disagree(raw, self.find):
            raise GatewayError(
                400,
                "invalid_request",
                "ambiguous path: with ';' parameters, trailing dots or spaces, or Unicode "
                "compatibility forms removed it is on another route",
            )
        path = normalise_path(raw)
        route = self.find(path)
        if route is None:
            raise GatewayError(404, "not_found", "no route for this path")
        # Forward the path that was routed on, encoded once, not the caller's bytes.
        return route, encode_path(route.upstream_path(path))
