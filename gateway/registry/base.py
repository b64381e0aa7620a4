"""The Registry protocol that the YAML and Redis registries implement."""

from __future__ import annotations

from typing import Protocol

from gateway.lifecycle import Reloadable
from gateway.registry.matching import ChainFacts, MatchResult
from gateway.registry.model import Client
from gateway.trust.identity import CertificateIdentity


class RegistryUnavailable(Exception):
    """The backing store cannot answer now (the caller answers 503, never 200)."""


class RegistryWriteError(Exception):
    """A write was refused; the message names the client and field at fault."""


def already_exists(client_id: str) -> str:
    return f"client {client_id}: already exists (use --replace)"


class Registry(Reloadable, Protocol):
    """Read side used on the request path, plus lifecycle hooks.

    ``generation`` changes whenever the set of clients may have changed, so
    that callers can cache a match per TLS connection and re-check it only then.
    As a Reloadable part the gateway's file watcher re-reads a file-backed
    registry when it changes, and every registry on SIGHUP.
    """

    @property
    def generation(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def description(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def match(
        self, identity: CertificateIdentity, *, exact_only: bool, chains: ChainFacts | None = None
    ) -> MatchResult:
        """Clients the certificate authenticates; raises RegistryUnavailable.

        ``chains`` says which trust material vouches for the certificate
        (SPIFFE bundles, issuer pins); see gateway.registry.matching.
        """
        ...

    async def get(self, client_id: str) -> Client | None: ...

    async def list_clients(self) -> list[Client]: ...


class WritableRegistry(Registry, Protocol):
    async def put(self, client: Client, *, replace: bool = True) -> None:
        """Add ``client``; with ``replace=False`` one already there is an error,
        decided atomically with the write (two concurrent adds: one wins)."""
        ...

    async def remove(self, client_id: str) -> bool: ...

    async def replace_all(self, clients: list[Client]) -> None: ...

    async def merge(self, clients: list[Client]) -> None:
        """Add or replace ``clients``; the others stay."""
        ...
