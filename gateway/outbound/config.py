"""The ``outbound:`` section: plain-HTTP listeners for a local app, calling out over mTLS.

Each listener presents the workload's certificate (gateway/outbound/client_tls.py),
may fetch tokens for it (gateway/outbound/tokens.py) and routes by prefix and
Host (gateway/outbound/routing.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader, kind_of
from gateway.config.values import (
    BindAddress,
    boolean,
    choice,
    parse_bind,
    positive_number,
    string,
    string_list,
    url,
)


@dataclass(frozen=True, slots=True)
class OutboundTlsConfig:
    """What an outbound listener presents, and what it trusts, on the way out."""

    cert: Path  # the workload's client certificate chain (PEM), reloaded on change
    key: Path
    ca: Path | None  # trust anchors for the destination; None: the system store
    server_sha256: tuple[str, ...]  # pinned destination leaf, lowercase hex SHA-256 of the DER
    min_version: Literal["1.2", "1.3"] = "1.2"


@dataclass(frozen=True, slots=True)
class OutboundTokenConfig:
    """client_credentials (RFC 6749 §4.4) done for the app, over mTLS (RFC 8705)."""

    token_endpoint: str | None  # exactly one of token_endpoint and issuer
    issuer: str | None  # discovery: mtls_endpoint_aliases.token_endpoint, else token_endpoint
    client_id: str
    scopes: tuple[str, ...]  # empty: no scope parameter (the server's default)
    ca: Path | None = None  # trust anchors for the token endpoint; None: those of tls.ca


@dataclass(frozen=True, slots=True)
class OutboundRouteConfig:
    prefix: str
    host: str | None  # matched against the app's Host (name only, any case); None: any
    destination: str  # https base URL
    token: OutboundTokenConfig | None
    strip_prefix: bool = False


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """One plain-HTTP listener for a local app's outgoing calls."""

    bind: BindAddress
    allow_non_loopback: bool
    routes: tuple[OutboundRouteConfig, ...]  # `destination:` is one route for "/"
    tls: OutboundTlsConfig
    connect_timeout: float = 5.0
    timeout: float = 60.0


_OUTBOUND_KEYS = {
    "bind",
    "allow_non_loopback",
    "destination",
    "routes",
    "tls",
    "token",
    "connect_timeout",
    "timeout",
}
_OUTBOUND_TOKEN_KEYS = {"token_endpoint", "issuer", "client_id", "scopes", "ca"}
_OUTBOUND_ROUTE_KEYS = {"prefix", "host", "destination", "token", "strip_prefix"}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _sha256_pin(value: Any) -> str:
    """Hex SHA-256 of a DER certificate; colons (openssl -fingerprint) allowed."""
    text = string(value).replace(":", "").lower()
    if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
        raise ValueError(f"expected a SHA-256 fingerprint (64 hex digits), got {value!r}")
    return text


def _host_name(value: Any) -> str:
    text = string(value).lower()
    if not text or ":" in text or "/" in text:
        raise ValueError(f"expected a host name without port, got {value!r}")
    return text


def parse_outbound(r: Reader, data: Any, taken: Sequence[str]) -> tuple[OutboundConfig, ...]:
    """The outbound listeners; ``taken``: the addresses (with a port) other listeners bind."""
    if data is None:
        return ()
    result: list[OutboundConfig] = []
    with r.at("outbound"):
        if not isinstance(data, list):
            r.problem(f"expected a list of outbound listeners, got {kind_of(data)}")
            return ()
        for i, item in enumerate(data):
            with r.at(i):
                outbound = _outbound_listener(r, r.mapping(item, _OUTBOUND_KEYS))
            if outbound is not None:
                result.append(outbound)
        binds = [str(o.bind) for o in result if o.bind is not None and o.bind.port]
        if len(set(binds)) != len(binds) or set(binds) & set(taken):
            r.problem("two listeners bind the same address")
    return tuple(result)


def _outbound_listener(r: Reader, ob: dict[str, Any]) -> OutboundConfig | None:
    bind = r.get(ob, "bind", parse_bind)
    allow_non_loopback = r.get(ob, "allow_non_loopback", boolean, False)
    if bind is not None and not allow_non_loopback and not _is_loopback(bind.host):
        # Whoever reaches this port borrows the workload's certificate and
        # tokens (ghostunnel refuses the same for its client mode).
        r.problem(
            f"{bind.host} is not a loopback address: anyone who reaches this plain-HTTP "
            "port calls out with this workload's certificate and tokens "
            "(set allow_non_loopback: true to accept that)",
            "bind",
        )
    with r.at("tls"):
        t = r.mapping(ob.get("tls"), {"cert", "key", "ca", "server_sha256", "min_version"})
        if "tls" not in ob:
            r.problem("required: the client certificate and key to present")
        pins = r.get(t, "server_sha256", _pin_list, ())
        tls = OutboundTlsConfig(
            cert=r.get(t, "cert", r.file),
            key=r.get(t, "key", r.file),
            ca=r.get(t, "ca", r.file, None),
            server_sha256=pins or (),
            min_version=r.get(t, "min_version", choice("1.2", "1.3"), "1.2"),
        )
    token_data = ob.get("token")
    token = _outbound_token(r, token_data, "token") if token_data is not None else None
    routes: list[OutboundRouteConfig] = []
    if ("destination" in ob) == ("routes" in ob):
        r.problem("set exactly one of destination and routes")
    elif "destination" in ob:
        destination = r.get(ob, "destination", url(("https",)))
        routes.append(OutboundRouteConfig("/", None, destination, token))
    else:
        routes = _outbound_routes(r, ob.get("routes"), token_data, token)
    return OutboundConfig(
        bind=bind,
        allow_non_loopback=allow_non_loopback,
        routes=tuple(routes),
        tls=tls,
        connect_timeout=r.get(ob, "connect_timeout", positive_number, 5.0),
        timeout=r.get(ob, "timeout", positive_number, 60.0),
    )


def _pin_list(value: Any) -> tuple[str, ...]:
    # A list, so that the next certificate can be pinned before the swap.
    values = value if isinstance(value, list) else [value]
    return tuple(_sha256_pin(v) for v in values)


def _outbound_token(r: Reader, data: Any, key: str) -> OutboundTokenConfig | None:
    with r.at(key):
        tk = r.mapping(data, _OUTBOUND_TOKEN_KEYS)
        if not isinstance(data, dict):
            return None
        if ("token_endpoint" in tk) == ("issuer" in tk):
            r.problem("set exactly one of token_endpoint and issuer")
        return OutboundTokenConfig(
            token_endpoint=r.get(tk, "token_endpoint", url(("https",)), None),
            issuer=r.get(tk, "issuer", url(("https",)), None),
            client_id=r.get(tk, "client_id", string),
            scopes=r.get(tk, "scopes", string_list, ()),
            ca=r.get(tk, "ca", r.file, None),
        )


def _outbound_routes(
    r: Reader, data: Any, inherited_token: Any, inherited: OutboundTokenConfig | None
) -> list[OutboundRouteConfig]:
    result: list[OutboundRouteConfig] = []
    with r.at("routes"):
        if not isinstance(data, list) or not data:
            r.problem("required: a list of at least one route")
            return []
        for i, item in enumerate(data):
            with r.at(i):
                rt = r.mapping(item, _OUTBOUND_ROUTE_KEYS)
                prefix = r.get(rt, "prefix", string, "/")
                if prefix is not None and not prefix.startswith("/"):
                    r.problem("must start with '/'", "prefix")
                token: OutboundTokenConfig | None = None
                own = rt.get("token")
                if own is False:
                    pass  # this destination gets mTLS only
                elif isinstance(own, dict) and isinstance(inherited_token, dict):
                    # The listener's settings with this route's on top; naming
                    # one way to find the endpoint replaces the other.
                    merged = {**inherited_token, **own}
                    for one, other in (("issuer", "token_endpoint"), ("token_endpoint", "issuer")):
                        if one in own and other not in own:
                            merged.pop(other, None)
                    token = _outbound_token(r, merged, "token")
                elif own is not None:
                    token = _outbound_token(r, own, "token")
                else:
                    token = inherited  # problems already reported at the listener's token
                result.append(
                    OutboundRouteConfig(
                        prefix=prefix,
                        host=r.get(rt, "host", _host_name, None),
                        destination=r.get(rt, "destination", url(("https",))),
                        token=token,
                        strip_prefix=r.get(rt, "strip_prefix", boolean, False),
                    )
                )
        keys = [(rt.prefix.rstrip("/") or "/", rt.host) for rt in result if rt.prefix]
        if len(set(keys)) != len(keys):
            r.problem("two routes share one prefix and host")
    return result
