"""What the proxy's stages learn about one request, as it passes from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from multidict import CIMultiDict

from gateway.auth import ConnectionAuth
from gateway.pipeline.messages import Request
from gateway.proxy.config import RouteConfig


@dataclass(slots=True, eq=False)
class ProxyExchange:
    policy: RouteConfig
    prefix: str
    target: str  # the encoded upstream path (query appended by the identity stage)
    auth: ConnectionAuth | None = None
    injected: tuple[tuple[str, str], ...] = ()
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)


def exchange_of(request: Request) -> ProxyExchange:
    exchange = request.exchange
    assert isinstance(exchange, ProxyExchange), "the route stage runs first"
    return exchange
