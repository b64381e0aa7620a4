"""What the proxy's stages learn about one request, as it passes from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import ConnectionAuth
from gateway.proxy.config import RouteConfig
from gateway.upstream.origin import Origin


@dataclass(slots=True, eq=False)
class ProxyExchange:
    policy: RouteConfig
    prefix: str
    target: str  # the encoded upstream path (query appended by the identity stage)
    origin: Origin  # the route's upstream, parsed once per configuration
    auth: ConnectionAuth | None = None
    injected: tuple[tuple[str, str], ...] = ()
    # The fields that go upstream (headers.upstream_request_fields), and
    # whether they hold a Content-Length and an Accept.
    headers: list[tuple[str, str]] | None = None
    has_length: bool = False
    has_accept: bool = False

    def upstream_fields(self) -> list[tuple[str, str]]:
        assert self.headers is not None, "the identity headers stage runs before forward"
        return self.headers
