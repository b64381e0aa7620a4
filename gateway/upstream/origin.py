"""Where requests go: an upstream URL parsed once into scheme, host, port and base path."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a route's requests go, parsed once from its upstream URL."""

    scheme: str
    host: str
    port: int
    base_path: str  # the URL's path ("" or "/base"), prefixed to every target
    # Basic credentials from the URL's userinfo, as aiohttp's client sent them.
    authorization: str | None = None
    # host[:port] as the URL wrote it: the Host field the upstream expects
    # (RFC 9110 §7.2), a default port left out as it was.
    authority: str = field(default="", compare=False)
    # Read on every request (the pool's key): worked out once.
    tls: bool = field(init=False, compare=False)
    # What a connection is opened to: origins that differ in path share connections.
    endpoint: tuple[str, str, int] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tls", self.scheme == "https")
        object.__setattr__(self, "endpoint", (self.scheme, self.host, self.port))


def parse_origin(url: str) -> Origin:
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    authorization = None
    if at:
        user, _, password = userinfo.partition(":")
        credentials = f"{unquote(user)}:{unquote(password)}".encode("latin-1")
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    base_path = (slash + path).rstrip("/") if path else ""
    return Origin(scheme, host, port, base_path, authorization, hostport)
