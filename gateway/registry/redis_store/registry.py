"""RedisRegistry: the client registry shared by a fleet of replicas.

One view of the registry per replica (replica.py: the cache, ``generation``
and whether it is current), acted on by three parts:

* reads.py: lookups from the cache when it is in sync, else one Lua call;
  every candidate re-checked against its own document;
* writes.py: one atomic script per change, publishing what it touched;
  imports staged under a private name and swapped in whole;
* subscription.py: the task following ``<prefix>changes``, which keeps the
  cache in sync and fails closed during an outage (``max_stale``).

Connections (plain, TLS, ACL, Sentinel, Cluster) are opened in connection.py.
"""

from __future__ import annotations

import contextlib
import logging

from gateway.lifecycle import ReloadableBase
from gateway.registry.config import RegistryConfig
from gateway.registry.matching import ChainFacts, MatchResult
from gateway.registry.model import Client
from gateway.registry.redis_store.connection import REDIS_ERRORS, describe, open_clients
from gateway.registry.redis_store.keys import KeySchema
from gateway.registry.redis_store.reads import Reader
from gateway.registry.redis_store.replica import ReplicaView
from gateway.registry.redis_store.subscription import ChangeSubscription
from gateway.registry.redis_store.writes import Writer
from gateway.trust.identity import CertificateIdentity

log = logging.getLogger("gateway.registry")


class RedisRegistry(ReloadableBase):
    """Registry (and WritableRegistry) on Redis; see docs/redis.md.

    A Reloadable part with no files: changes arrive by pub/sub, and SIGHUP
    (``reload``) drops the whole cache.
    """

    def __init__(self, config: RegistryConfig) -> None:
        super().__init__(name="registry", logger=log, failure="registry reload failed")
        keys = KeySchema(config.key_prefix)
        self._clients = open_clients(config)
        self._redis = self._clients.commands
        self._description = describe(config)
        self._view = ReplicaView(config.cache_size, max_stale=config.max_stale)
        self._subscription = ChangeSubscription(
            config, self._clients, keys, self._view, self._description
        )
        self._reader = Reader(
            self._redis, keys, self._view, self._description, on_outage=self._subscription.lost
        )
        self._writer = Writer(
            self._redis, keys, self._view, self._description, list_clients=self.list_clients
        )

    # ------------------------------------------------------------ protocol state

    @property
    def generation(self) -> int:
        return self._view.generation

    @property
    def ready(self) -> bool:
        return self._view.synced

    @property
    def description(self) -> str:
        return self._description

    @property
    def cached_entries(self) -> int:
        return len(self._view.cache)

    @property
    def applied_generation(self) -> int | None:
        """The Redis ``generation`` whose changes this replica has applied (None: not yet)."""
        return self._view.applied_generation

    @property
    def cache_hits(self) -> int:  # read by /metrics
        return self._reader.cache_hits

    @property
    def cache_misses(self) -> int:
        return self._reader.cache_misses

    async def start(self) -> None:
        await self._subscription.start()

    async def close(self) -> None:
        await self._subscription.close()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._clients.aclose()

    def watched_files(self) -> tuple[()]:
        return ()

    def rebuild(self) -> None:
        """SIGHUP: forget everything cached; the next lookups ask Redis."""
        self._view.drop_all()
        log.info("registry: cache dropped on reload; the next lookups ask %s", self._description)

    # ------------------------------------------------------------ reads, writes

    async def match(
        self, identity: CertificateIdentity, *, exact_only: bool, chains: ChainFacts | None = None
    ) -> MatchResult:
        return await self._reader.match(identity, exact_only=exact_only, chains=chains)

    async def get(self, client_id: str) -> Client | None:
        return await self._reader.get(client_id)

    async def list_clients(self) -> list[Client]:
        return await self._reader.list_clients()

    async def put(self, client: Client, *, replace: bool = True) -> None:
        await self._writer.put(client, replace=replace)

    async def remove(self, client_id: str) -> bool:
        return await self._writer.remove(client_id)

    async def replace_all(self, clients: list[Client]) -> None:
        await self._writer.replace_all(clients)

    async def merge(self, clients: list[Client]) -> None:
        """Add or replace ``clients``, keeping the others (one swap, as an import)."""
        await self._writer.merge(clients)
