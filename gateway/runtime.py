"""From a validated config to a ready-to-run Gateway with every part plugged in."""

from __future__ import annotations

from gateway.app import Gateway, build_gateway
from gateway.config import GatewayConfig


def assemble(config: GatewayConfig) -> Gateway:
    """Build the gateway and its token service; ConfigError lists every problem."""
    return build_gateway(config)
