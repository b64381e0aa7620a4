"""Configuration: YAML plus environment overrides, validated once into frozen objects.

Every problem is collected and reported as ``file:key: message`` so that an
operator fixes a config in one pass (``mtls-gateway check``).  Paths are
relative to the config file.  ``MTLS_GATEWAY_<PATH>`` overrides any value, with
``__`` between levels and list indexes as numbers
(``MTLS_GATEWAY_LISTENERS__0__BIND=0.0.0.0:8443``); values are read as YAML
scalars, so ``true``, ``3600`` and ``[a, b]`` work.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from gateway.route_rules import dead_prefix, routing_key

ENV_PREFIX = "MTLS_GATEWAY_"

AuthMode = Literal["client", "token", "none"]
# How a route speaks to its upstream: HTTP/1.1; HTTP/2 in cleartext with
# prior knowledge (RFC 9113 §3.3, http:// upstreams); HTTP/2 over TLS chosen
# by ALPN (RFC 9113 §3.2, https:// upstreams).  gRPC needs h2c or h2.
UpstreamProtocol = Literal["http1", "h2c", "h2"]
ClientCertMode = Literal["optional", "required"]


class ConfigError(Exception):
    """One or more problems, each ``file:key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
class AdminConfig:
    bind: BindAddress | None
    # Host names answered besides loopback names and IP literals (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # Client ids and CA subjects as /metrics label values; off: "" and fingerprints.
    metrics_client_labels: bool = False


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    kind: Literal["yaml", "redis"]
    path: Path | None
    url: str | None
    key_prefix: str
    max_stale: float  # seconds a cached match is served while Redis is unreachable
    cache_size: int
    # kind: redis only.  Credentials here override those in the URL, so that the
    # URL can sit in a ConfigMap and the password in a Secret (env override).
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None  # rediss://: CA bundle; None: the system store
    tls_cert: Path | None = None  # rediss://: client certificate (with tls_key)
    tls_key: Path | None = None
    sentinel_master: str | None = None  # set: ask sentinel_nodes where the master is
    sentinel_nodes: tuple[tuple[str, int], ...] = ()
    sentinel_username: str | None = None  # the sentinels' own ACL, if any
    sentinel_password: str | None = None
    cluster: bool = False
    connect_timeout: float = 2.0
    command_timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class TokensConfig:
    signing_keys: tuple[Path, ...]
    lifetime: int
    audience: str
    scope_format: Literal["string", "array"]
    allow_insecure_key_permissions: bool


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


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


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


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: Path
    issuer: str
    listeners: tuple[ListenerConfig, ...]
    admin: AdminConfig
    registry: RegistryConfig
    tokens: TokensConfig
    routes: tuple[RouteConfig, ...]
    headers: HeaderNames = field(default_factory=HeaderNames)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    outbound: tuple[OutboundConfig, ...] = ()  # plain HTTP in, mTLS out (gateway/outbound/)


T = TypeVar("T")
_MISSING: Any = object()


class _Reader:
    """Walks the YAML tree, remembering the key path for error messages."""

    def __init__(self, source: Path, base: Path) -> None:
        self.source = source
        self.base = base
        self.problems: list[str] = []
        self._path: list[str] = []
        # (id(mapping), key) -> the environment variable that put the key there.
        self.env_origins: dict[tuple[int, str], str] = {}

    @property
    def where(self) -> str:
        dotted = ""
        for part in self._path:
            dotted += part if part.startswith("[") else (f".{part}" if dotted else part)
        return dotted

    def problem(self, message: str, key: str | None = None) -> None:
        where = self.where if key is None else (f"{self.where}.{key}" if self.where else key)
        self.problems.append(f"{self.source}:{where or '<top>'}: {message}")

    @contextmanager
    def at(self, key: str | int) -> Iterator[None]:
        self._path.append(f"[{key}]" if isinstance(key, int) else key)
        try:
            yield
        finally:
            self._path.pop()

    def mapping(self, data: Any, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(f"expected a mapping, got {_kind(data)}")
            return {}
        for key in data:
            if key not in allowed:
                expected = f"expected one of: {', '.join(sorted(allowed))}"
                variable = self.env_origins.get((id(data), str(key)))
                if variable is not None:
                    where = f"{self.where}.{key}" if self.where else str(key)
                    self.problems.append(f"env:{variable}: unknown key {where} ({expected})")
                else:
                    self.problem(f"unknown key ({expected})", str(key))
        return data

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        convert: Callable[[Any], T],
        default: Any = _MISSING,
    ) -> T:
        with self.at(key):
            if key not in data or data[key] is None:
                if default is _MISSING:
                    self.problem("required")
                    return cast(T, None)
                return cast(T, default)
            try:
                return convert(data[key])
            except (ValueError, TypeError) as exc:
                self.problem(str(exc))
                return cast(T, None)

    def file(self, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path")
        path = Path(value)
        path = path if path.is_absolute() else self.base / path
        if not path.exists():
            raise ValueError(f"file not found: {path}")
        if not os.access(path, os.R_OK):
            raise ValueError(f"file not readable: {path}")
        return path

    def new_path(self, value: Any) -> Path:
        """A path that may not exist yet (it is created or watched later)."""
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path")
        path = Path(value)
        return path if path.is_absolute() else self.base / path


def _placeholder() -> Any:
    return None


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _string(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return str(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (bool, non-number, nan, inf, or too large).

    A timer armed with nan or inf (``.nan`` and ``.inf`` are YAML) raises in
    uvloop on every connection, and float() of a 400-digit integer overflows.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _positive_number(value: Any) -> float:
    number = _finite(value)
    if number is None or number <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def _non_negative_number(value: Any) -> float:
    number = _finite(value)
    if number is None or number < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _choice(*options: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return convert


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _host_names(value: Any) -> tuple[str, ...]:
    names = _string_list(value)
    for host in names:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", host):
            raise ValueError(f"not a host name: {host!r} (no port, no scheme)")
    return tuple(host.lower().rstrip(".") for host in names)


def parse_bind(value: Any) -> BindAddress:
    text = _string(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"missing host in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # Each label letters, digits and hyphens: "my host-1" must not pass
        # `check` and then fail at bind time.
        if host != "localhost" and not all(
            part and all(ch.isalnum() or ch == "-" for ch in part) for part in host.split(".")
        ):
            raise ValueError(f"invalid host in {text!r}") from None
    return BindAddress(host, port)


def _url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _string(value)
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {text!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"URL must not have a query or fragment: {text!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError when out of range
        except ValueError:
            raise ValueError(f"port out of range (0-65535) in {text!r}") from None
        return (
            text.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}"
        )

    return convert


def _header_name(value: Any) -> str | None:
    if value is None or value is False:
        return None
    text = _string(value)
    if not text or any(not (ch.isalnum() or ch in "-_") for ch in text):
        raise ValueError(f"not a valid header name: {text!r}")
    return text


# --------------------------------------------------------------------------- env


def apply_env_overrides(
    data: dict[str, Any],
    env: Mapping[str, str],
    origins: dict[tuple[int, str], str] | None = None,
) -> list[str]:
    """Apply ``MTLS_GATEWAY_A__B__0__C`` variables in place; return problems.

    ``origins`` learns which mapping key each variable set ((id of the
    mapping, key) -> variable name), so a misspelt key is reported as the
    environment variable it came from, not as a key of the file.
    """
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            problems.append(f"env:{name}: malformed variable name")
            continue
        try:
            value = yaml.safe_load(env[name])
        except (yaml.YAMLError, RecursionError):
            value = env[name]
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"env:{name}: no list item {part!r} to override")
                    break
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if origins is not None and part not in node:
                    origins[(id(node), part)] = name
                if last:
                    node[part] = value
                elif node.get(part) is None:
                    # Absent, or present but empty (``admin:`` with its keys
                    # commented out): both read as an empty mapping.
                    child: dict[str, Any] = {}
                    node[part] = child
                    node = child
                else:
                    node = node[part]
            else:
                # _kind() already says "a string", "a list", ...
                problems.append(f"env:{name}: cannot override inside {_kind(node)}")
                break
    return problems


# --------------------------------------------------------------------------- load


def read_yaml_file(path: Path) -> Any:
    """Read YAML, turning every failure into ConfigError with file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else "<top>"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{line}: invalid YAML: {problem}"]) from None
    except RecursionError:
        # PyYAML's parser recurses per nesting level: "[[[[..." exhausts the stack.
        raise ConfigError([f"{path}:<top>: invalid YAML: nested too deeply"]) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    source = Path(path)
    data = read_yaml_file(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:<top>: expected a mapping of settings, got {_kind(data)}"])
    origins: dict[tuple[int, str], str] = {}
    problems = apply_env_overrides(data, os.environ if env is None else env, origins)
    # absolute(), not resolve(): a config mounted from a ConfigMap is a symlink into a
    # timestamped directory the kubelet replaces; paths must stay on the stable side.
    reader = _Reader(source, source.absolute().parent)
    reader.env_origins = origins
    config = _build(reader, data)
    problems += reader.problems
    if problems:
        raise ConfigError(problems)
    return config


_TOP_KEYS = {
    "issuer",
    "listeners",
    "admin",
    "registry",
    "tokens",
    "routes",
    "headers",
    "limits",
    "logging",
    "outbound",
}


def _build(r: _Reader, data: dict[str, Any]) -> GatewayConfig:
    top = r.mapping(data, _TOP_KEYS)
    issuer = r.get(top, "issuer", _url(("https",)))
    listeners = _listeners(r, top.get("listeners"))
    with r.at("admin"):
        if "admin" in top and top["admin"] is None:
            admin = AdminConfig(bind=None)  # ``admin: null``: no admin port at all
        else:
            admin_data = r.mapping(
                top.get("admin"), {"bind", "allowed_hosts", "metrics_client_labels"}
            )
            admin = AdminConfig(
                bind=r.get(admin_data, "bind", parse_bind, BindAddress("127.0.0.1", 9901)),
                allowed_hosts=r.get(admin_data, "allowed_hosts", _host_names, ()),
                metrics_client_labels=r.get(admin_data, "metrics_client_labels", _boolean, False),
            )
    registry = _registry(r, top.get("registry"))
    tokens = _tokens(r, top.get("tokens"), issuer)
    routes = _routes(r, top.get("routes"))
    with r.at("headers"):
        h = r.mapping(top.get("headers"), set(HeaderNames.__dataclass_fields__))
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
    with r.at("limits"):
        lim = r.mapping(top.get("limits"), set(LimitsConfig.__dataclass_fields__))
        d = LimitsConfig()
        limits = LimitsConfig(
            max_header_bytes=r.get(lim, "max_header_bytes", _positive_int, d.max_header_bytes),
            max_headers=r.get(lim, "max_headers", _positive_int, d.max_headers),
            header_read_timeout=r.get(
                lim, "header_read_timeout", _positive_number, d.header_read_timeout
            ),
            keepalive_timeout=r.get(
                lim, "keepalive_timeout", _positive_number, d.keepalive_timeout
            ),
            max_token_request_bytes=r.get(
                lim, "max_token_request_bytes", _positive_int, d.max_token_request_bytes
            ),
            drain_delay=r.get(lim, "drain_delay", _non_negative_number, d.drain_delay),
            shutdown_timeout=r.get(
                lim, "shutdown_timeout", _non_negative_number, d.shutdown_timeout
            ),
            max_connections=r.get(lim, "max_connections", _positive_int, d.max_connections),
            websocket_max_message_bytes=r.get(
                lim, "websocket_max_message_bytes", _positive_int, d.websocket_max_message_bytes
            ),
            websocket_idle_timeout=r.get(
                lim, "websocket_idle_timeout", _positive_number, d.websocket_idle_timeout
            ),
            send_timeout=r.get(lim, "send_timeout", _positive_number, d.send_timeout),
            request_body_timeout=r.get(
                lim, "request_body_timeout", _positive_number, d.request_body_timeout
            ),
            request_body_min_rate=r.get(
                lim, "request_body_min_rate", _non_negative_number, d.request_body_min_rate
            ),
            upstream_idle_connections=r.get(
                lim, "upstream_idle_connections", _non_negative_int, d.upstream_idle_connections
            ),
        )
    with r.at("logging"):
        lg = r.mapping(top.get("logging"), {"level", "format", "access_log"})
        logging_config = LoggingConfig(
            level=r.get(lg, "level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
            format=r.get(lg, "format", _choice("json", "text"), "json"),
            access_log=r.get(lg, "access_log", _boolean, True),
        )
    return GatewayConfig(
        source=r.source,
        issuer=issuer,
        listeners=listeners,
        admin=admin,
        registry=registry,
        tokens=tokens,
        routes=routes,
        headers=headers,
        limits=limits,
        logging=logging_config,
        outbound=_outbound(r, top.get("outbound"), listeners, admin),
    )


def _listeners(r: _Reader, data: Any) -> tuple[ListenerConfig, ...]:
    result: list[ListenerConfig] = []
    with r.at("listeners"):
        if not isinstance(data, list) or not data:
            r.problem("required: a list of at least one listener")
            return ()
        for i, item in enumerate(data):
            with r.at(i):
                ls = r.mapping(
                    item,
                    {
                        "bind",
                        "public_url",
                        "tls",
                        "proxy_protocol",
                        "forwarded_client_cert",
                        "http2",
                    },
                )
                bind = r.get(ls, "bind", parse_bind)
                public_url = r.get(ls, "public_url", _url(("https",)), None)
                with r.at("tls"):
                    t = r.mapping(
                        ls.get("tls"),
                        {
                            "cert",
                            "key",
                            "client_ca",
                            "client_certs",
                            "crl",
                            "pinned_certs",
                            "min_version",
                            "spiffe_bundles",
                            "untrusted_certificates",
                        },
                    )
                    if "tls" not in ls:
                        r.problem("required")
                    pinned_raw = t.get("pinned_certs") or []
                    pinned: list[Path] = []
                    with r.at("pinned_certs"):
                        if not isinstance(pinned_raw, list):
                            r.problem("expected a list of files")
                        else:
                            for j, p in enumerate(pinned_raw):
                                pinned.append(_file_at(r, j, p))
                    tls = TlsConfig(
                        cert=r.get(t, "cert", r.file),
                        key=r.get(t, "key", r.file),
                        client_ca=r.get(t, "client_ca", r.file, None),
                        client_certs=r.get(
                            t, "client_certs", _choice("optional", "required"), "optional"
                        ),
                        crl=r.get(t, "crl", r.file, None),
                        pinned_certs=tuple(p for p in pinned if p is not None),
                        min_version=r.get(t, "min_version", _choice("1.2", "1.3"), "1.2"),
                        spiffe_bundles=_spiffe_bundles(r, t.get("spiffe_bundles")),
                        untrusted_certificates=r.get(
                            t, "untrusted_certificates", _choice("respond", "alert"), "respond"
                        ),
                    )
                    # No client_ca is fine: self-issued clients registered by
                    # thumbprint need no trust anchor on the gateway at all.
                result.append(
                    ListenerConfig(
                        bind=bind,
                        public_url=public_url,
                        tls=tls,
                        proxy_protocol=_proxy_protocol(r, ls.get("proxy_protocol")),
                        forwarded_client_cert=_forwarded_cert(r, ls.get("forwarded_client_cert")),
                        http2=r.get(ls, "http2", _boolean, True),
                    )
                )
        binds = [str(ls.bind) for ls in result if ls.bind is not None]
        if len(set(binds)) != len(binds):
            r.problem("two listeners bind the same address")
    return tuple(result)


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


def _proxy_protocol(r: _Reader, data: Any) -> ProxyProtocolConfig | None:
    if data is None:
        return None
    with r.at("proxy_protocol"):
        pp = r.mapping(data, {"trusted_sources", "required"})
        return ProxyProtocolConfig(
            trusted_sources=r.get(pp, "trusted_sources", _networks),
            required=r.get(pp, "required", _boolean, True),
        )


def _forwarded_cert(r: _Reader, data: Any) -> ForwardedCertConfig | None:
    if data is None:
        return None
    with r.at("forwarded_client_cert"):
        fc = r.mapping(data, {"trusted_proxies", "format", "required"})
        return ForwardedCertConfig(
            trusted_proxies=r.get(fc, "trusted_proxies", _networks),
            format=r.get(fc, "format", _choice(*FORWARDED_CERT_FORMATS)),
            required=r.get(fc, "required", _boolean, False),
        )


def _spiffe_bundles(r: _Reader, data: Any) -> tuple[tuple[str, Path], ...]:
    from gateway.spiffe import SpiffeIdError, trust_domain_key

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


def _file_at(r: _Reader, index: int, value: Any) -> Path:
    with r.at(index):
        try:
            return r.file(value)
        except ValueError as exc:
            r.problem(str(exc))
            return _placeholder()  # type: ignore[no-any-return]


def _registry(r: _Reader, data: Any) -> RegistryConfig:
    redis_keys = {
        "url",
        "key_prefix",
        "max_stale",
        "cache_size",
        "username",
        "password",
        "tls",
        "sentinel",
        "cluster",
        "connect_timeout",
        "command_timeout",
    }

    def non_negative(value: Any) -> float:
        number = _finite(value)
        if number is None or number < 0:
            raise ValueError(f"expected a number of seconds >= 0, got {value!r}")
        return number

    def has_hash_tag(prefix: str) -> bool:
        # Redis Cluster hashes only the part between the first "{" and the next "}".
        start = prefix.find("{")
        end = prefix.find("}", start + 1)
        return start >= 0 and end > start + 1

    def redis_url(value: Any) -> str:
        text = _string(value)
        parts = urlsplit(text)
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"expected unix:///path/to/redis.sock, got {text!r}")
        elif parts.scheme in ("redis", "rediss"):
            if not parts.hostname:
                raise ValueError(f"missing host in {text!r}")
            try:
                parts.port  # noqa: B018 - raises ValueError when out of range
            except ValueError:
                raise ValueError(f"invalid port in {text!r}") from None
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"the path must be a database number, e.g. /0, got {text!r}")
        else:
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {text!r}")
        if parts.query or parts.fragment:
            raise ValueError("URL must not have a query or fragment: set registry keys instead")
        return text

    with r.at("registry"):
        reg = r.mapping(data, {"kind", "path"} | redis_keys)
        if data is None:
            r.problem("required")
        kind = r.get(reg, "kind", _choice("yaml", "redis"), "yaml")
        path = r.get(reg, "path", r.file) if kind == "yaml" else None
        if kind != "redis":
            # The redis keys may stay in a YAML deployment's config (the example
            # file carries both); they are read only when kind is redis.
            return RegistryConfig(
                kind=kind,
                path=path,
                url=None,
                key_prefix="mtls-gateway:",
                max_stale=60.0,
                cache_size=100_000,
            )
        url = r.get(reg, "url", redis_url)
        scheme = urlsplit(url).scheme if url else ""
        key_prefix = r.get(reg, "key_prefix", _string, "mtls-gateway:")
        if key_prefix == "":
            r.problem(
                "must not be empty: it keeps this registry apart in a shared Redis", "key_prefix"
            )

        tls_ca = tls_cert = tls_key = None
        with r.at("tls"):
            tls = r.mapping(reg.get("tls"), {"ca", "cert", "key"})
            if tls:
                if scheme != "rediss":
                    r.problem("TLS settings need a rediss:// URL")
                tls_ca = r.get(tls, "ca", r.file, None)
                tls_cert = r.get(tls, "cert", r.file, None)
                tls_key = r.get(tls, "key", r.file, None)
                if (tls_cert is None) != (tls_key is None):
                    r.problem("cert and key go together")

        master: str | None = None
        nodes: list[tuple[str, int]] = []
        sentinel_username = sentinel_password = None
        with r.at("sentinel"):
            sentinel = r.mapping(reg.get("sentinel"), {"master", "nodes", "username", "password"})
            if sentinel:
                master = r.get(sentinel, "master", _string)
                sentinel_username = r.get(sentinel, "username", _string, None)
                sentinel_password = r.get(sentinel, "password", _string, None)
                with r.at("nodes"):
                    raw_nodes = sentinel.get("nodes")
                    if not isinstance(raw_nodes, list) or not raw_nodes:
                        r.problem("required: a list of sentinel host:port addresses")
                        raw_nodes = []
                    for i, node in enumerate(raw_nodes):
                        with r.at(i):
                            try:
                                bind = parse_bind(node)
                            except ValueError as exc:
                                r.problem(str(exc))
                                continue
                            nodes.append((bind.host, bind.port))
                if scheme == "unix":
                    r.problem("sentinel needs a redis:// or rediss:// URL")

        cluster = r.get(reg, "cluster", _boolean, False)
        if cluster:
            if master is not None:
                r.problem("choose one of sentinel and cluster", "cluster")
            if scheme == "unix":
                r.problem("cluster needs a redis:// or rediss:// URL", "cluster")
            # MULTI/EXEC and Lua scripts need every key of a write in one hash
            # slot; a hash tag in the prefix puts the whole registry in one slot.
            if key_prefix and not has_hash_tag(key_prefix):
                r.problem(
                    "a cluster needs a hash tag in the prefix, e.g. '{mtls-gateway}:'",
                    "key_prefix",
                )
        return RegistryConfig(
            kind=kind,
            path=None,
            url=url,
            key_prefix=key_prefix,
            max_stale=r.get(reg, "max_stale", non_negative, 60.0),
            cache_size=r.get(reg, "cache_size", _positive_int, 100_000),
            username=r.get(reg, "username", _string, None),
            password=r.get(reg, "password", _string, None),
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            sentinel_master=master,
            sentinel_nodes=tuple(nodes),
            sentinel_username=sentinel_username,
            sentinel_password=sentinel_password,
            cluster=cluster,
            connect_timeout=r.get(reg, "connect_timeout", _positive_number, 2.0),
            command_timeout=r.get(reg, "command_timeout", _positive_number, 2.0),
        )


def _tokens(r: _Reader, data: Any, issuer: str | None) -> TokensConfig:
    with r.at("tokens"):
        tk = r.mapping(
            data,
            {
                "signing_keys",
                "lifetime",
                "audience",
                "scope_format",
                "allow_insecure_key_permissions",
            },
        )
        keys: list[Path] = []
        with r.at("signing_keys"):
            raw = tk.get("signing_keys")
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not raw:
                r.problem(
                    "required: at least one signing key file (mtls-gateway keys generate FILE)"
                )
            else:
                keys = [_file_at(r, i, p) for i, p in enumerate(raw)]
        return TokensConfig(
            signing_keys=tuple(k for k in keys if k is not None),
            lifetime=r.get(tk, "lifetime", _positive_int, 3600),
            audience=r.get(tk, "audience", _string, f"{issuer}/resources" if issuer else ""),
            scope_format=r.get(tk, "scope_format", _choice("string", "array"), "string"),
            allow_insecure_key_permissions=r.get(
                tk, "allow_insecure_key_permissions", _boolean, False
            ),
        )


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
    from gateway.headers import OVERRIDE_HEADERS, header_key

    names = _string_list(value)
    unknown = [n for n in names if header_key(n) not in OVERRIDE_HEADERS]
    if unknown:
        raise ValueError(
            f"not a path/method-override header: {', '.join(unknown)} "
            f"(expected some of: {', '.join(sorted(OVERRIDE_HEADERS))})"
        )
    return frozenset(header_key(n) for n in names)


def _check_upstream_protocol(r: _Reader, route: RouteConfig) -> None:
    """h2c is cleartext and h2 is TLS: the upstream URL's scheme must say the same."""
    scheme = route.upstream.partition("://")[0] if route.upstream else None
    if route.upstream_protocol == "h2c" and scheme == "https":
        r.problem("h2c is HTTP/2 in cleartext: use an http:// upstream, or h2", "upstream_protocol")
    elif route.upstream_protocol == "h2" and scheme == "http":
        r.problem("h2 is HTTP/2 over TLS: use an https:// upstream, or h2c", "upstream_protocol")


def _routes(r: _Reader, data: Any) -> tuple[RouteConfig, ...]:
    result: list[RouteConfig] = []
    with r.at("routes"):
        if not isinstance(data, list) or not data:
            r.problem("required: a list of at least one route")
            return ()
        for i, item in enumerate(data):
            with r.at(i):
                rt = r.mapping(item, _ROUTE_KEYS)
                prefix = r.get(rt, "prefix", _string)
                if prefix is not None and not prefix.startswith("/"):
                    r.problem("must start with '/'", "prefix")
                route = RouteConfig(
                    prefix=prefix,
                    upstream=r.get(rt, "upstream", _url(("http", "https"))),
                    auth=r.get(rt, "auth", _choice("client", "token", "none"), "client"),
                    scopes=r.get(rt, "scopes", _string_list, ()),
                    clients=r.get(rt, "clients", _string_list, ()),
                    connect_timeout=r.get(rt, "connect_timeout", _positive_number, 5.0),
                    timeout=r.get(rt, "timeout", _positive_number, 60.0),
                    strip_prefix=r.get(rt, "strip_prefix", _boolean, False),
                    preserve_host=r.get(rt, "preserve_host", _boolean, False),
                    allow_override_headers=r.get(
                        rt, "allow_override_headers", _override_headers, frozenset()
                    ),
                    upstream_protocol=r.get(
                        rt, "upstream_protocol", _choice("http1", "h2c", "h2"), "http1"
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


# --------------------------------------------------------------------------- outbound

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
    text = _string(value).replace(":", "").lower()
    if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
        raise ValueError(f"expected a SHA-256 fingerprint (64 hex digits), got {value!r}")
    return text


def _host_name(value: Any) -> str:
    text = _string(value).lower()
    if not text or ":" in text or "/" in text:
        raise ValueError(f"expected a host name without port, got {value!r}")
    return text


def _outbound(
    r: _Reader, data: Any, listeners: tuple[ListenerConfig, ...], admin: AdminConfig
) -> tuple[OutboundConfig, ...]:
    if data is None:
        return ()
    result: list[OutboundConfig] = []
    with r.at("outbound"):
        if not isinstance(data, list):
            r.problem(f"expected a list of outbound listeners, got {_kind(data)}")
            return ()
        for i, item in enumerate(data):
            with r.at(i):
                outbound = _outbound_listener(r, r.mapping(item, _OUTBOUND_KEYS))
            if outbound is not None:
                result.append(outbound)
        taken = [str(ls.bind) for ls in listeners if ls.bind is not None and ls.bind.port]
        if admin.bind is not None and admin.bind.port:
            taken.append(str(admin.bind))
        binds = [str(o.bind) for o in result if o.bind is not None and o.bind.port]
        if len(set(binds)) != len(binds) or set(binds) & set(taken):
            r.problem("two listeners bind the same address")
    return tuple(result)


def _outbound_listener(r: _Reader, ob: dict[str, Any]) -> OutboundConfig | None:
    bind = r.get(ob, "bind", parse_bind)
    allow_non_loopback = r.get(ob, "allow_non_loopback", _boolean, False)
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
            min_version=r.get(t, "min_version", _choice("1.2", "1.3"), "1.2"),
        )
    token_data = ob.get("token")
    token = _outbound_token(r, token_data, "token") if token_data is not None else None
    routes: list[OutboundRouteConfig] = []
    if ("destination" in ob) == ("routes" in ob):
        r.problem("set exactly one of destination and routes")
    elif "destination" in ob:
        destination = r.get(ob, "destination", _url(("https",)))
        routes.append(OutboundRouteConfig("/", None, destination, token))
    else:
        routes = _outbound_routes(r, ob.get("routes"), token_data, token)
    return OutboundConfig(
        bind=bind,
        allow_non_loopback=allow_non_loopback,
        routes=tuple(routes),
        tls=tls,
        connect_timeout=r.get(ob, "connect_timeout", _positive_number, 5.0),
        timeout=r.get(ob, "timeout", _positive_number, 60.0),
    )


def _pin_list(value: Any) -> tuple[str, ...]:
    # A list, so that the next certificate can be pinned before the swap.
    values = value if isinstance(value, list) else [value]
    return tuple(_sha256_pin(v) for v in values)


def _outbound_token(r: _Reader, data: Any, key: str) -> OutboundTokenConfig | None:
    with r.at(key):
        tk = r.mapping(data, _OUTBOUND_TOKEN_KEYS)
        if not isinstance(data, dict):
            return None
        if ("token_endpoint" in tk) == ("issuer" in tk):
            r.problem("set exactly one of token_endpoint and issuer")
        return OutboundTokenConfig(
            token_endpoint=r.get(tk, "token_endpoint", _url(("https",)), None),
            issuer=r.get(tk, "issuer", _url(("https",)), None),
            client_id=r.get(tk, "client_id", _string),
            scopes=r.get(tk, "scopes", _string_list, ()),
            ca=r.get(tk, "ca", r.file, None),
        )


def _outbound_routes(
    r: _Reader, data: Any, inherited_token: Any, inherited: OutboundTokenConfig | None
) -> list[OutboundRouteConfig]:
    result: list[OutboundRouteConfig] = []
    with r.at("routes"):
        if not isinstance(data, list) or not data:
            r.problem("required: a list of at least one route")
            return []
        for i, item in enumerate(data):
            with r.at(i):
                rt = r.mapping(item, _OUTBOUND_ROUTE_KEYS)
                prefix = r.get(rt, "prefix", _string, "/")
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
                        destination=r.get(rt, "destination", _url(("https",))),
                        token=token,
                        strip_prefix=r.get(rt, "strip_prefix", _boolean, False),
                    )
                )
        keys = [(rt.prefix.rstrip("/") or "/", rt.host) for rt in result if rt.prefix]
        if len(set(keys)) != len(keys):
            r.problem("two routes share one prefix and host")
    return result
