"""The token service: signing keys plus everything that uses them, plugged into a Gateway.

One instance per process.  It adds the OAuth routes to every listener app
(``Gateway.extensions``), checks tokens on ``auth: token`` routes
(``Gateway.token_checker``) and hands the key set, a Reloadable part, to the
gateway's file watcher (``Gateway.watcher``: on change and on SIGHUP).
"""

from __future__ import annotations

from gateway.app import Gateway, ListenerContext
from gateway.config.load import GatewayConfig
from gateway.config.reader import ConfigError
from gateway.oauth.endpoints import oauth_endpoints
from gateway.oauth.keys import SigningKey, SigningKeyError, SigningKeySet, load_signing_key
from gateway.oauth.resource import BearerTokenChecker
from gateway.pipeline.messages import Handler
from gateway.registry.base import Registry


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

    def install(self, gateway: Gateway) -> None:
        gateway.extensions.append(self.endpoints)
        gateway.token_checker = self.checker
        gateway.watcher.add(self.keys)

    def endpoints(self, listener: ListenerContext, gateway: Gateway) -> dict[str, Handler]:
        return oauth_endpoints(
            listener, gateway, config=self.config, keys=self.keys, registry=self.registry
        )
