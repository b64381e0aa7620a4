"""The ``routes:`` and ``headers:`` sections: where requests go, who may send them, what is said upstream.

Routes are matched by gateway/proxy/routes.py; the identity header names are
written by gateway/headers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway.config.reader import Reader
from gateway.config.values import (
    boolean,
    choice,
    positive_number,
    string,
    string_list,
    url,
)
from gateway.route_rules import dead_prefix, routing_key

AuthMode = Literal["client", "token", "none"]
# How a route speaks to its upstream: HTTP/1.1; HTTP/2 in cleartext with
# prior knowledge (RFC 9113 §3.3, http:// upstreams); HTTP/2 over TLS chosen
# by ALPN (RFC 9113 §3.2, https:// upstreams).  gRPC needs h2c or h2.
UpstreamProtocol = Literal["http1", "h2c", "h2"]


@dataclass(frozen=True, slots=True)
class RouteConfig:
    prefix: str
    upstream: str
    auth: AuthMode
    scopes: tuple[str, ...]
    clients: tuple[str, ...]  # allow-list of client_ids; empty: any registered client
    connect_timeout: float
    timeout: float  # until the upstream's response headers; past it: 504
    strip_prefix: bool
    preserve_host: bool
    # Path/method-override headers (headers.OVERRIDE_HEADERS) relayed on this
    # route, in key form; every other one is stripped.
    allow_override_headers: frozenset[str] = frozenset()
    upstream_protocol: UpstreamProtocol = "http1"


@dataclass(frozen=True, slots=True)
class HeaderNames:
    """Identity header names; ``None`` disables one."""

    client_id: str | None = "X-Client-Id"
    subject: str | None = "X-Client-Cert-Subject"
    thumbprint: str | None = "X-Client-Cert-Thumbprint"
    sha256: str | None = "X-Client-Cert-Sha256"
    xfcc: str | None = "X-Forwarded-Client-Cert"
    client_cert: str | None = None  # RFC 9440 "Client-Cert", off by default


_ROUTE_KEYS = {
    "prefix",
    "upstream",
    "auth",
    "scopes",
    "clients",
    "connect_timeout",
    "timeout",
    "strip_prefix",
    "preserve_host",
    "allow_override_headers",
    "upstream_protocol",
}


def _override_headers(value: Any) -> frozenset[str]:
    # Imported here: gateway.headers imports HeaderNames from this module.
    from gateway.headers import OVERRIDE_HEADERS, header_key

    names = string_list(value)
    unknown = [n for n in names if header_key(n) not in OVERRIDE_HEADERS]
    if unknown:
        raise ValueError(
            f"not a path/method-override header: {', '.join(unknown)} "
            f"(expected some of: {', '.join(sorted(OVERRIDE_HEADERS))})"
        )
    return frozenset(header_key(n) for n in names)


def _check_upstream_protocol(r: Reader, route: RouteConfig) -> None:
    """h2c is cleartext and h2 is TLS: the upstream URL's scheme must say the same."""
    scheme = route.upstream.partition("://")[0] if route.upstream else None
    if route.upstream_protocol == "h2c" and scheme == "https":
        r.problem("h2c is HTTP/2 in cleartext: use an http:// upstream, or h2", "upstream_protocol")
    elif route.upstream_protocol == "h2" and scheme == "http":
        r.problem("h2 is HTTP/2 over TLS: use an https:// upstream, or h2c", "upstream_protocol")


def parse_routes(r: Reader, data: Any) -> tuple[RouteConfig, ...]:
    result: list[RouteConfig] = []
    with r.at("routes"):
        if not isinstance(data, list) or not data:
            r.problem("required: a list of at least one route")
            return ()
        for i, item in enumerate(data):
            with r.at(i):
                rt = r.mapping(item, _ROUTE_KEYS)
                prefix = r.get(rt, "prefix", string)
                if prefix is not None and not prefix.startswith("/"):
                    r.problem("must start with '/'", "prefix")
                route = RouteConfig(
                    prefix=prefix,
                    upstream=r.get(rt, "upstream", url(("http", "https"))),
                    auth=r.get(rt, "auth", choice("client", "token", "none"), "client"),
                    scopes=r.get(rt, "scopes", string_list, ()),
                    clients=r.get(rt, "clients", string_list, ()),
                    connect_timeout=r.get(rt, "connect_timeout", positive_number, 5.0),
                    timeout=r.get(rt, "timeout", positive_number, 60.0),
                    strip_prefix=r.get(rt, "strip_prefix", boolean, False),
                    preserve_host=r.get(rt, "preserve_host", boolean, False),
                    allow_override_headers=r.get(
                        rt, "allow_override_headers", _override_headers, frozenset()
                    ),
                    upstream_protocol=r.get(
                        rt, "upstream_protocol", choice("http1", "h2c", "h2"), "http1"
                    ),
                )
                if route.scopes and route.auth != "token":
                    r.problem("scopes apply only to auth: token routes", "scopes")
                _check_upstream_protocol(r, route)
                result.append(route)
        for i, loaded in enumerate(result):
            dead = dead_prefix(loaded.prefix) if loaded.prefix is not None else None
            if dead is not None:
                with r.at(i):
                    r.problem(f"{loaded.prefix!r} matches no request: {dead}", "prefix")
        # /api and /api/ are one route to the table: the second would be dead.
        by_key: dict[str, list[str]] = {}
        for loaded in result:
            if loaded.prefix is not None:
                by_key.setdefault(routing_key(loaded.prefix), []).append(loaded.prefix)
        for spelled in sorted(sorted(set(ps)) for ps in by_key.values() if len(ps) > 1):
            hint = " (one route: a trailing slash makes no difference)" if len(spelled) > 1 else ""
            r.problem(f"duplicate route prefix: {' and '.join(spelled)}{hint}")
    return tuple(result)


def _header_name(value: Any) -> str | None:
    if value is None or value is False:
        return None
    text = string(value)
    if not text or any(not (ch.isalnum() or ch in "-_") for ch in text):
        raise ValueError(f"not a valid header name: {text!r}")
    return text


def parse_header_names(r: Reader, data: Any) -> HeaderNames:
    with r.at("headers"):
        h = r.mapping(data, set(HeaderNames.__dataclass_fields__))
        names: dict[str, str | None] = {}
        default_names = HeaderNames()
        for name in HeaderNames.__dataclass_fields__:
            names[name] = getattr(default_names, name)
            if name in h:
                with r.at(name):
                    try:
                        names[name] = _header_name(h[name])
                    except ValueError as exc:
                        r.problem(str(exc))
        headers = HeaderNames(**names)
        configured = [
            n for n in (getattr(headers, f) for f in HeaderNames.__dataclass_fields__) if n
        ]
        if len({n.lower().replace("_", "-") for n in configured}) != len(configured):
            r.problem("two identity headers share one name")
    return headers
