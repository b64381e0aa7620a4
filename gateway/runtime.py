"""From a validated config to a ready-to-run Gateway with every part plugged in."""

from __future__ import annotations

from gateway.app import Gateway, build_gateway
from gateway.config.load import GatewayConfig
from gateway.config.reader import ConfigError
from gateway.oauth.keys import SigningKeySet
from gateway.oauth.service import TokenService, load_signing_keys
from gateway.outbound.listener import OutboundListener, build_outbound


def assemble(config: GatewayConfig) -> Gateway:
    """Build the gateway and its token service; ConfigError lists every problem."""
    problems: list[str] = []
    try:
        gateway = build_gateway(config)
    except ConfigError as exc:
        problems += exc.problems
    keys: SigningKeySet | None = None
    try:
        keys = load_signing_keys(config)
    except ConfigError as exc:
        problems += exc.problems
    outbound: list[OutboundListener] = []
    try:
        outbound = build_outbound(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        # Listener, registry and key problems together: `check` lists them in one pass.
        raise ConfigError(problems)
    assert keys is not None
    TokenService(config, keys, gateway.registry).install(gateway)
    for listener in outbound:
        gateway.outbound.append(listener)
        gateway.watcher.add(listener.tls)
    return gateway
