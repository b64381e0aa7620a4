"""Client registries: where the gateway looks up who a certificate belongs to."""

from gateway.registry.base import Registry, RegistryUnavailable
from gateway.registry.matching import ClientMatch, MatchResult
from gateway.registry.model import Client, ClientError, Secret

__all__ = [
    "Client",
    "ClientError",
    "ClientMatch",
    "MatchResult",
    "Registry",
    "RegistryUnavailable",
    "Secret",
]
