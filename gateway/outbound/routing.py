"""Which destination an app's request goes to: by path prefix and, optionally, Host.

Prefixes match whole path segments ("/api" serves /api and /api/x, never
/apiary), on the same normalised path the inbound side routes on.  The
longest prefix wins; between equal prefixes a route naming the request's
Host wins over one that names none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.outbound.config import OutboundRouteConfig

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OutboundRoute(Generic[T]):
    config: OutboundRouteConfig
    prefix: str  # without trailing slash, except "/"
    target: T  # what the forwarder keeps per route (token source, trust)

    def matches(self, path: str, host: str | None) -> bool:
        if self.config.host is not None and self.config.host != host:
            return False
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")

    def destination_path(self, path: str) -> str:
        if self.config.strip_prefix and self.prefix != "/":
            return path[len(self.prefix) :] or "/"
        return path


def request_host(host_header: str | None) -> str | None:
    """The name part of a Host header value, lowercased: ``API.x:8080`` is ``api.x``."""
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


class OutboundRouteTable(Generic[T]):
    def __init__(self, routes: Sequence[tuple[OutboundRouteConfig, T]]) -> None:
        built = [OutboundRoute(c, c.prefix.rstrip("/") or "/", t) for c, t in routes]
        built.sort(key=lambda r: (len(r.prefix), r.config.host is not None), reverse=True)
        self._routes = tuple(built)

    def find(self, path: str, host: str | None) -> OutboundRoute[T] | None:
        for route in self._routes:
            if route.matches(path, host):
                return route
        return None
