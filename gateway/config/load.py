"""``GatewayConfig``, the whole file, and ``load_config``: YAML, then env overrides, then every section.

Each section is parsed by the package it configures; the problems of all of
them are raised together as one ``ConfigError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.env import apply_env_overrides
from gateway.config.reader import ConfigError, Reader, kind_of, read_yaml_file
from gateway.config.values import url
from gateway.listener.config import LimitsConfig, ListenerConfig, parse_limits, parse_listeners
from gateway.oauth.config import TokensConfig, parse_tokens
from gateway.ops.config import AdminConfig, LoggingConfig, parse_admin, parse_logging
from gateway.outbound.config import OutboundConfig, parse_outbound
from gateway.proxy.config import HeaderNames, RouteConfig, parse_header_names, parse_routes
from gateway.registry.config import RegistryConfig, parse_registry


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


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    source = Path(path)
    data = read_yaml_file(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:<top>: expected a mapping of settings, got {kind_of(data)}"])
    origins: dict[tuple[int, str], str] = {}
    problems = apply_env_overrides(data, os.environ if env is None else env, origins)
    # absolute(), not resolve(): a config mounted from a ConfigMap is a symlink into a
    # timestamped directory the kubelet replaces; paths must stay on the stable side.
    reader = Reader(source, source.absolute().parent)
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


def _build(r: Reader, data: dict[str, Any]) -> GatewayConfig:
    top = r.mapping(data, _TOP_KEYS)
    issuer = r.get(top, "issuer", url(("https",)))
    listeners = parse_listeners(r, top.get("listeners"))
    admin = parse_admin(r, top)
    registry = parse_registry(r, top.get("registry"))
    tokens = parse_tokens(r, top.get("tokens"), issuer)
    routes = parse_routes(r, top.get("routes"))
    headers = parse_header_names(r, top.get("headers"))
    limits = parse_limits(r, top.get("limits"))
    logging_config = parse_logging(r, top.get("logging"))
    # An outbound listener may not share an address with the inbound ones or admin.
    taken = [str(ls.bind) for ls in listeners if ls.bind is not None and ls.bind.port]
    if admin.bind is not None and admin.bind.port:
        taken.append(str(admin.bind))
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
        outbound=parse_outbound(r, top.get("outbound"), taken),
    )
