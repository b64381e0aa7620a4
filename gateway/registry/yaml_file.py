"""The embedded registry: a YAML file, indexed in memory, reloaded when it changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

from gateway.config.reader import ConfigError
from gateway.lifecycle import ReloadableBase, ReloadFailed
from gateway.registry.base import RegistryWriteError, already_exists
from gateway.registry.matching import ChainFacts, ClientIndex, MatchResult
from gateway.registry.model import Client
from gateway.registry.yaml_document import dump_registry_document as dump_registry_document
from gateway.registry.yaml_document import load_registry_file as load_registry_file
from gateway.registry.yaml_document import parse_registry_document as parse_registry_document
from gateway.registry.yaml_write import Compute, clean_stale_temp_files, write_clients
from gateway.trust.identity import CertificateIdentity

log = logging.getLogger("gateway.registry")


class YamlRegistry(ReloadableBase):
    """Registry backed by one YAML file.

    The whole file is parsed and indexed on each change (the gateway's file
    watcher calls ``reload``), then swapped in with one assignment, so a
    request never sees half a registry; a file that fails validation leaves
    the running index in place.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(
            name="registry",
            logger=log,
            failure="registry reload failed, keeping the running clients",
        )
        self._path = path
        self._index = ClientIndex(load_registry_file(path))
        self._generation = 1

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ready(self) -> bool:
        return True

    @property
    def description(self) -> str:
        return f"yaml:{self._path}"

    @property
    def index(self) -> ClientIndex:
        return self._index

    async def start(self) -> None:
        # Temporary files of a CLI killed mid-write; never one that is being written.
        await asyncio.to_thread(clean_stale_temp_files, self._path)

    async def close(self) -> None:
        pass

    def watched_files(self) -> tuple[Path]:
        return (self._path,)

    def rebuild(self) -> None:
        try:
            index = ClientIndex(load_registry_file(self._path))
        except ConfigError as exc:
            raise ReloadFailed(exc.problems) from None
        self._index = index
        self._generation += 1
        log.info("registry reloaded: %d clients from %s", len(index), self._path)

    async def match(
        self, identity: CertificateIdentity, *, exact_only: bool, chains: ChainFacts | None = None
    ) -> MatchResult:
        return self._index.match(
            identity, exact_only=exact_only, now=dt.datetime.now(dt.UTC), chains=chains
        )

    async def get(self, client_id: str) -> Client | None:
        return self._index.get(client_id)

    async def list_clients(self) -> list[Client]:
        return self._index.clients()

    # Writes (CLI): serialised, checked and durable (yaml_write.py); the running
    # gateways see the change through their watchers.

    async def put(self, client: Client, *, replace: bool = True) -> None:
        def with_client(now: list[Client]) -> list[Client]:
            others = [c for c in now if c.client_id != client.client_id]
            if not replace and len(others) != len(now):
                raise RegistryWriteError(already_exists(client.client_id))
            return [*others, client]

        await self._write(with_client)

    async def remove(self, client_id: str) -> bool:
        def without(now: list[Client]) -> list[Client] | None:
            kept = [c for c in now if c.client_id != client_id]
            return kept if len(kept) != len(now) else None

        before = self._generation
        await self._write(without)
        return self._generation != before

    async def replace_all(self, clients: list[Client]) -> None:
        await self._write(lambda _now: clients)

    async def merge(self, clients: list[Client]) -> None:
        """Add or replace ``clients``, keeping the others (``clients import``)."""
        incoming = {c.client_id for c in clients}
        await self._write(lambda now: [*(c for c in now if c.client_id not in incoming), *clients])

    async def _write(self, compute: Compute) -> None:
        changed = False

        def tracked(now: list[Client]) -> list[Client] | None:
            nonlocal changed
            wanted = compute(now)
            changed = wanted is not None
            return wanted

        index = await asyncio.to_thread(write_clients, self._path, tracked)
        self._index = index
        if changed:
            self._generation += 1
