"""What the proxy's stages learn about one request, as it passes from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import ConnectionAuth
from gateway.proxy.config import RouteConfig
from gateway.upstream.origin import Origin


# init=False and a written __init__: one per request, and a generated one runs
# interpreted even in the compiled build (gateway/pipeline/facts.py).
@dataclass(slots=True, eq=False, init=False)
class ProxyExchange:
    policy: RouteConfig
    prefix: str
    target: str  # the encoded upstream path (query appended by the identity stage)
    origin: Origin  # the route's upstream, parsed once per configuration
    auth: ConnectionAuth | None
    injected: tuple[tuple[str, str], ...]
    # The fields that go upstream (headers.upstream_request_fields), and
    # whether they hold a Content-Length and an Accept.
    headers: list[tuple[str, str]] | None
    has_length: bool
    has_accept: bool

    def __init__(self, policy: RouteConfig, prefix: str, target: str, origin: Origin) -> None:
        self.policy = policy
        self.prefix = prefix
        self.target = target
        self.origin = origin
        self.auth = None
        self.injected = ()
        self.headers = None
        self.has_length = False
        self.has_accept = False

    def upstream_fields(self) -> list[tuple[str, str]]:
        assert self.headers is not None, "the identity headers stage runs before forward"
        return self.headers
