"""``mtls-gateway check``: what loads but is still wrong, beyond what load_config refuses.

Problems (exit 1) are mistakes with a certain outcome: a route naming a
client the local registry does not have can only ever answer 403.
Warnings (exit 0) are choices that are sometimes deliberate: an admin port
off loopback (its /metrics and /readyz answer anyone who reaches it), a TLS
private key that group or others may read (the signing key in that state is
refused outright: gateway.oauth.keys), a client list checked against a
remote registry that may gain the client later, a route prefix under which
the gateway's own endpoints answer first.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.load import GatewayConfig
from gateway.config.values import BindAddress
from gateway.registry.base import Registry
from gateway.registry.model import Client
from gateway.route_rules import shadowed_gateway_paths


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _loopback(bind: BindAddress) -> bool:
    if bind.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.host).is_loopback
    except ValueError:
        return False  # a name may resolve anywhere


def _key_exposed(path: Path) -> str | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # load_config already reported a missing file
    if mode & 0o077:
        return f"permissions {mode:04o} let group/other read the private key {path}; chmod 600 it"
    return None


def config_findings(config: GatewayConfig) -> Findings:
    """Findings that need only the config and the files it names."""
    found = Findings()
    source = config.source
    bind = config.admin.bind
    if bind is not None and not _loopback(bind):
        found.warnings.append(
            f"{source}:admin.bind: {bind} is not loopback: /metrics, /readyz and /healthz "
            "answer without authentication to anyone who reaches it"
        )
    keys = [(f"listeners[{i}].tls.key", ls.tls.key) for i, ls in enumerate(config.listeners)]
    keys += [(f"outbound[{i}].tls.key", ob.tls.key) for i, ob in enumerate(config.outbound)]
    for where, path in keys:
        exposed = _key_exposed(path)
        if exposed is not None:
            found.warnings.append(f"{source}:{where}: {exposed}")
    for i, route in enumerate(config.routes):
        shadowed = shadowed_gateway_paths(route.prefix)
        if shadowed:
            found.warnings.append(
                f"{source}:routes[{i}].prefix: {', '.join(shadowed)} under {route.prefix} "
                "are the gateway's own endpoints and never reach the upstream"
            )
    return found


def registry_findings(
    config: GatewayConfig, registry: Registry, clients: Sequence[Client], found: Findings
) -> None:
    """Route ``clients`` checked against the registry's clients."""
    known = {client.client_id for client in clients}
    remote = config.registry.kind != "yaml"
    for i, route in enumerate(config.routes):
        missing = [client_id for client_id in route.clients if client_id not in known]
        if not missing:
            continue
        names = ", ".join(repr(m) for m in missing)
        where = f"{config.source}:routes[{i}].clients"
        if remote:
            found.warnings.append(
                f"{where}: no client {names} in {registry.description} yet: "
                "the route answers 403 to everyone until it is added"
            )
        else:
            found.problems.append(f"{where}: no client {names} in {registry.description}")
