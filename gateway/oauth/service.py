"""The token service: signing keys plus everything that uses them, plugged into a Gateway.

One instance per process.  It adds the OAuth routes to every listener app
(``Gateway.extensions``), checks tokens on ``auth: token`` routes
(``Gateway.token_checker``) and re-reads key files when they change
(``Gateway.reloaders``, polled every second and run on SIGHUP).
"""

from __future__ import annotations

import logging

from gateway.app import Gateway, ListenerContext
from gateway.config import ConfigError, GatewayConfig
from gateway.oauth.endpoints import oauth_endpoints
from gateway.oauth.keys import SigningKey, SigningKeyError, SigningKeySet, load_signing_key
from gateway.oauth.resource import BearerTokenChecker
from gateway.pipeline.messages import Handler
from gateway.registry.base import Registry

log = logging.getLogger("gateway.oauth")


def load_signing_keys(config: GatewayConfig) -> SigningKeySet:
    """Every configured key, or ConfigError naming each bad one as ``file:key: message``."""
    tokens = config.tokens
    where = f"{config.source}:tokens.signing_keys"
    if not tokens.signing_keys:
        # The rule: no key, no start (quickstart generates one first).
        raise ConfigError([f"{where}: required: at least one signing key file"])
    problems: list[str] = []
    keys: list[SigningKey] = []
    seen: dict[str, int] = {}
    for i, path in enumerate(tokens.signing_keys):
        try:
            key = load_signing_key(
                path, allow_insecure_permissions=tokens.allow_insecure_key_permissions
            )
        except SigningKeyError as exc:
            problems.append(f"{where}[{i}]: {exc}")
            continue
        if key.kid in seen:
            # Same key twice would publish one kid twice in the JWKS.
            problems.append(f"{where}[{i}]: {path}: same key as signing_keys[{seen[key.kid]}]")
            continue
        seen[key.kid] = i
        keys.append(key)
    if problems:
        raise ConfigError(problems)
    return SigningKeySet(keys, allow_insecure_permissions=tokens.allow_insecure_key_permissions)


class TokenService:
    def __init__(self, config: GatewayConfig, keys: SigningKeySet, registry: Registry) -> None:
        self.config = config
        self.keys = keys
        self.registry = registry
        self.checker = BearerTokenChecker(
            keys=keys,
            issuer=config.issuer,
            audience=config.tokens.audience,
            header_names=config.headers,
        )
        self._last_reload_error: str | None = None
        self.reloads_ok = 0
        self.reload_failures = 0  # counted once per distinct error, like the log line

    def install(self, gateway: Gateway) -> None:
        gateway.extensions.append(self.endpoints)
        gateway.token_checker = self.checker
        gateway.reloaders.append(self.reload_keys)
        gateway.reload_parts.append(("signing_keys", self))

    def endpoints(self, listener: ListenerContext, gateway: Gateway) -> dict[str, Handler]:
        return oauth_endpoints(
            listener, gateway, config=self.config, keys=self.keys, registry=self.registry
        )

    def reload_keys(self) -> bool:
        """Swap in changed key files; False (and the old keys kept) if any is bad.

        A half-written Secret must not take signing down: the set is replaced
        whole or not at all, and the next poll tries again.
        """
        try:
            changed = self.keys.reload_if_changed()
        except SigningKeyError as exc:
            message = str(exc)
            if message != self._last_reload_error:  # polled every second: say it once
                self.reload_failures += 1
                log.error("signing key reload failed, keeping current keys: %s", message)
                self._last_reload_error = message
            return False
        self._last_reload_error = None
        if changed:
            self.reloads_ok += 1
            log.info(
                "signing keys reloaded",
                extra={
                    "event": "keys_reloaded",
                    "signing_kid": self.keys.signing_key.kid,
                    "kids": [key.kid for key in self.keys.keys],
                },
            )
        return True
