"""Re-reading gateway.yaml itself, on SIGHUP and when the file changes.

Routes change live: each listener's proxy swaps its route table between two
requests.  Every file the config names (certificates, keys, CRLs, registry)
is a Reloadable part of its own (gateway/lifecycle).  Other keys (listeners, admin, registry kind,
tokens, headers, limits, logging, outbound) shape sockets and objects built
at start: a change to them is logged as needing a restart, never half
applied.  A config that fails validation keeps everything as it is.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.lifecycle import ReloadableBase, ReloadFailed

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.config")

RESTART_KEYS = (
    "issuer",
    "listeners",
    "admin",
    "registry",
    "tokens",
    "headers",
    "limits",
    "logging",
    "outbound",
)


class ConfigReloader(ReloadableBase):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__(
            name="config", logger=log, failure="config reload failed, keeping the running config"
        )
        self._gateway = gateway

    def watched_files(self) -> tuple[Path]:
        return (self._gateway.config.source,)

    def rebuild(self) -> None:
        running = self._gateway.config
        try:
            loaded = load_config(running.source)
        except ConfigError as exc:
            raise ReloadFailed(exc.problems) from None
        if loaded.routes != running.routes:
            for proxy in self._gateway.proxies:
                proxy.reconfigure(loaded.routes)
            log.info("routes reloaded: %d routes", len(loaded.routes))
        needs_restart = [
            key for key in RESTART_KEYS if getattr(loaded, key) != getattr(running, key)
        ]
        if needs_restart:
            log.warning(
                "config changes to %s take effect after a restart", ", ".join(needs_restart)
            )
        self._gateway.config = dataclasses.replace(running, routes=loaded.routes)
