"""The ``listeners:`` and ``limits:`` sections: what each listener binds, presents and trusts.

TLS (gateway/listener/tls_*.py, gateway/listener/tls_material.py), the PROXY protocol
(gateway/listener/proxy_header.py), certificates forwarded by TLS-terminating
proxies (gateway/trust/forwarded.py), and the limits and deadlines the connection
layers (gateway/http1/, gateway/websocket/, the proxy) hold to.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader
from gateway.config.values import (
    BindAddress,
    boolean,
    choice,
    non_negative_int,
    non_negative_number,
    parse_bind,
    positive_int,
    positive_number,
    url,
)

ClientCertMode = Literal["optional", "required"]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None
    client_certs: ClientCertMode
    crl: Path | None
    # Deprecated: a self-issued client's X509CertificateThumbprint secret alone
    # admits it (the TLS layer's verify callback lets Python decide); the files
    # are still read, never trusted, and a warning names the replacement.
    pinned_certs: tuple[Path, ...]
    min_version: Literal["1.2", "1.3"]
    # SPIFFE trust domain -> CA bundle: an X.509-SVID of that domain must chain
    # to its own bundle (X.509-SVID §5.1).  The bundles join the handshake's
    # trust store; which one vouches is checked per registry secret (chain.py).
    spiffe_bundles: tuple[tuple[str, Path], ...] = ()
    # respond: every certificate completes the handshake and an untrusted one
    # gets a 403 (or invalid_client) naming the reason; alert: a chain that does
    # not verify against client_ca ends the handshake with OpenSSL's alert
    # (unknown_ca, certificate_expired, ...), so thumbprint-only clients cannot connect.
    untrusted_certificates: Literal["respond", "alert"] = "respond"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedCertFormat = Literal["rfc9440", "envoy_xfcc", "nginx", "traefik", "aws_alb"]
FORWARDED_CERT_FORMATS: tuple[str, ...] = ("rfc9440", "envoy_xfcc", "nginx", "traefik", "aws_alb")


@dataclass(frozen=True, slots=True)
class ProxyProtocolConfig:
    """PROXY protocol v1/v2 before TLS, from L4 load balancers (gateway/listener/proxy_header.py)."""

    trusted_sources: tuple[Network, ...]
    required: bool = True  # every connection must come from a trusted source with a header


@dataclass(frozen=True, slots=True)
class ForwardedCertConfig:
    """Client certificates forwarded in a header by TLS-terminating proxies (forwarded.py)."""

    trusted_proxies: tuple[Network, ...]
    format: ForwardedCertFormat
    required: bool = False  # true: callers not behind a trusted proxy are anonymous


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    bind: BindAddress
    public_url: str | None  # None: https://<bound address>, resolved at start
    tls: TlsConfig
    proxy_protocol: ProxyProtocolConfig | None = None
    forwarded_client_cert: ForwardedCertConfig | None = None
    # ALPN offers h2 before http/1.1 (gateway/http2/); false: HTTP/1.1 only.
    http2: bool = True


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = 8190
    max_headers: int = 100
    header_read_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_token_request_bytes: int = 16384
    # SIGTERM: /readyz fails at once; listeners keep accepting for drain_delay
    # (so load balancers notice), then stop; in-flight requests get up to
    # shutdown_timeout to finish.
    drain_delay: float = 0.0
    shutdown_timeout: float = 30.0
    # Open connections per listener (and per worker process); one more gets a
    # 503 and is closed after its handshake.  Each idle TLS connection holds
    # memory until a timeout ends it, so the number must be bounded.
    max_connections: int = 10000
    # WebSocket messages (gateway/websocket/): the largest one relayed either
    # way (one byte more closes both sides with 1009, RFC 6455 §7.4.1), and the
    # seconds without any frame either way (pings count) before both sides are
    # closed with 1001.
    websocket_max_message_bytes: int = 4 * 1024 * 1024
    websocket_idle_timeout: float = 300.0
    # A response write may stay blocked this long because the caller does not
    # read (NGINX's send_timeout); then the connection is aborted and the
    # upstream connection released.
    send_timeout: float = 60.0
    # A request body gets request_body_timeout seconds, plus one second per
    # request_body_min_rate bytes received (Apache mod_reqtimeout's
    # body=…,MinRate=…): a trickled body is cut (408), a large upload at a
    # decent rate never is.  min_rate 0: the timeout is a total.
    request_body_timeout: float = 30.0
    request_body_min_rate: float = 500.0
    # Idle keep-alive connections the proxy keeps per upstream origin (NGINX's
    # upstream `keepalive 64`); past it the longest idle one is closed, so a
    # burst of callers does not leave a socket per caller open upstream.
    upstream_idle_connections: int = 64


_LISTENER_KEYS = {"bind", "public_url", "tls", "proxy_protocol", "forwarded_client_cert", "http2"}
_TLS_KEYS = {
    "cert",
    "key",
    "client_ca",
    "client_certs",
    "crl",
    "pinned_certs",
    "min_version",
    "spiffe_bundles",
    "untrusted_certificates",
}


def parse_listeners(r: Reader, data: Any) -> tuple[ListenerConfig, ...]:
    result: list[ListenerConfig] = []
    with r.at("listeners"):
        if not isinstance(data, list) or not data:
            r.problem("required: a list of at least one listener")
            return ()
        for i, item in enumerate(data):
            with r.at(i):
                ls = r.mapping(item, _LISTENER_KEYS)
                bind = r.get(ls, "bind", parse_bind)
                public_url = r.get(ls, "public_url", url(("https",)), None)
                tls = _tls(r, ls)
                result.append(
                    ListenerConfig(
                        bind=bind,
                        public_url=public_url,
                        tls=tls,
                        proxy_protocol=_proxy_protocol(r, ls.get("proxy_protocol")),
                        forwarded_client_cert=_forwarded_cert(r, ls.get("forwarded_client_cert")),
                        http2=r.get(ls, "http2", boolean, True),
                    )
                )
        binds = [str(ls.bind) for ls in result if ls.bind is not None]
        if len(set(binds)) != len(binds):
            r.problem("two listeners bind the same address")
    return tuple(result)


def _tls(r: Reader, ls: dict[str, Any]) -> TlsConfig:
    with r.at("tls"):
        t = r.mapping(ls.get("tls"), _TLS_KEYS)
        if "tls" not in ls:
            r.problem("required")
        pinned_raw = t.get("pinned_certs") or []
        pinned: list[Path] = []
        with r.at("pinned_certs"):
            if not isinstance(pinned_raw, list):
                r.problem("expected a list of files")
            else:
                for j, p in enumerate(pinned_raw):
                    pinned.append(r.file_at(j, p))
        # No client_ca is fine: self-issued clients registered by
        # thumbprint need no trust anchor on the gateway at all.
        return TlsConfig(
            cert=r.get(t, "cert", r.file),
            key=r.get(t, "key", r.file),
            client_ca=r.get(t, "client_ca", r.file, None),
            client_certs=r.get(t, "client_certs", choice("optional", "required"), "optional"),
            crl=r.get(t, "crl", r.file, None),
            pinned_certs=tuple(p for p in pinned if p is not None),
            min_version=r.get(t, "min_version", choice("1.2", "1.3"), "1.2"),
            spiffe_bundles=_spiffe_bundles(r, t.get("spiffe_bundles")),
            untrusted_certificates=r.get(
                t, "untrusted_certificates", choice("respond", "alert"), "respond"
            ),
        )


def _networks(value: Any) -> tuple[Network, ...]:
    """CIDRs (a bare address is one host); a /0 would trust every caller: refused."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of CIDRs, e.g. [10.0.0.0/8, 127.0.0.1/32]")
    networks: list[Network] = []
    for text in value:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not an address or CIDR: {text!r}") from None
        if network.prefixlen == 0:
            raise ValueError(f"{text}: trusting every address lets any caller forge this")
        networks.append(network)
    return tuple(networks)


def _proxy_protocol(r: Reader, data: Any) -> ProxyProtocolConfig | None:
    if data is None:
        return None
    with r.at("proxy_protocol"):
        pp = r.mapping(data, {"trusted_sources", "required"})
        return ProxyProtocolConfig(
            trusted_sources=r.get(pp, "trusted_sources", _networks),
            required=r.get(pp, "required", boolean, True),
        )


def _forwarded_cert(r: Reader, data: Any) -> ForwardedCertConfig | None:
    if data is None:
        return None
    with r.at("forwarded_client_cert"):
        fc = r.mapping(data, {"trusted_proxies", "format", "required"})
        return ForwardedCertConfig(
            trusted_proxies=r.get(fc, "trusted_proxies", _networks),
            format=r.get(fc, "format", choice(*FORWARDED_CERT_FORMATS)),
            required=r.get(fc, "required", boolean, False),
        )


def _spiffe_bundles(r: Reader, data: Any) -> tuple[tuple[str, Path], ...]:
    from gateway.trust.spiffe import SpiffeIdError, trust_domain_key

    if data is None:
        return ()
    bundles: list[tuple[str, Path]] = []
    with r.at("spiffe_bundles"):
        if not isinstance(data, dict):
            r.problem("expected a mapping of trust domain to bundle file")
            return ()
        for domain, path in data.items():
            with r.at(str(domain)):
                try:
                    trust_domain = trust_domain_key(str(domain))
                except SpiffeIdError as exc:
                    r.problem(f"not a SPIFFE trust domain: {exc}")
                    continue
                try:
                    bundles.append((trust_domain, r.file(path)))
                except ValueError as exc:
                    r.problem(str(exc))
    return tuple(bundles)


def parse_limits(r: Reader, data: Any) -> LimitsConfig:
    with r.at("limits"):
        lim = r.mapping(data, set(LimitsConfig.__dataclass_fields__))
        d = LimitsConfig()
        return LimitsConfig(
            max_header_bytes=r.get(lim, "max_header_bytes", positive_int, d.max_header_bytes),
            max_headers=r.get(lim, "max_headers", positive_int, d.max_headers),
            header_read_timeout=r.get(
                lim, "header_read_timeout", positive_number, d.header_read_timeout
            ),
            keepalive_timeout=r.get(lim, "keepalive_timeout", positive_number, d.keepalive_timeout),
            max_token_request_bytes=r.get(
                lim, "max_token_request_bytes", positive_int, d.max_token_request_bytes
            ),
            drain_delay=r.get(lim, "drain_delay", non_negative_number, d.drain_delay),
            shutdown_timeout=r.get(
                lim, "shutdown_timeout", non_negative_number, d.shutdown_timeout
            ),
            max_connections=r.get(lim, "max_connections", positive_int, d.max_connections),
            websocket_max_message_bytes=r.get(
                lim, "websocket_max_message_bytes", positive_int, d.websocket_max_message_bytes
            ),
            websocket_idle_timeout=r.get(
                lim, "websocket_idle_timeout", positive_number, d.websocket_idle_timeout
            ),
            send_timeout=r.get(lim, "send_timeout", positive_number, d.send_timeout),
            request_body_timeout=r.get(
                lim, "request_body_timeout", positive_number, d.request_body_timeout
            ),
            request_body_min_rate=r.get(
                lim, "request_body_min_rate", non_negative_number, d.request_body_min_rate
            ),
            upstream_idle_connections=r.get(
                lim, "upstream_idle_connections", non_negative_int, d.upstream_idle_connections
            ),
        )
