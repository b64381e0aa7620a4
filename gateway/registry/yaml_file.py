"""The embedded registry: a YAML file, indexed in memory, reloaded when it changes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gateway.config import ConfigError, read_yaml_file
from gateway.identity import CertificateIdentity
from gateway.registry.base import RegistryWriteError
from gateway.registry.matching import ChainFacts, ClientIndex, MatchResult
from gateway.registry.model import Client, ClientError, parse_client
from gateway.watch import ChangeDetector

log = logging.getLogger("gateway.registry")


def parse_registry_document(data: Any, source: str) -> list[Client]:
    """Clients of a registry document; ConfigError with ``file:key: message`` lines."""
    if data is None:
        data = {"clients": []}
    if not isinstance(data, dict) or set(data) - {"clients"}:
        raise ConfigError([f"{source}:<top>: expected a mapping with one key, 'clients'"])
    raw = data.get("clients") or []
    if not isinstance(raw, list):
        raise ConfigError([f"{source}:clients: expected a list of clients"])
    problems: list[str] = []
    clients: list[Client] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        name = item.get("client_id") if isinstance(item, dict) else None
        label = f" (client {name})" if isinstance(name, str) else ""
        try:
            client = parse_client(item)
        except ClientError as exc:
            problems += [f"{source}:clients[{i}].{p}{label}" for p in exc.problems]
            continue
        if client.client_id in seen:
            problems.append(
                f"{source}:clients[{i}].client_id: duplicate of clients[{seen[client.client_id]}]"
                f" ({client.client_id})"
            )
            continue
        seen[client.client_id] = i
        clients.append(client)
    if problems:
        raise ConfigError(problems)
    return clients


def load_registry_file(path: Path) -> list[Client]:
    return parse_registry_document(read_yaml_file(path), str(path))


def dump_registry_document(clients: list[Client]) -> str:
    return yaml.safe_dump(
        {"clients": [c.to_dict() for c in clients]}, sort_keys=False, allow_unicode=True
    )


class YamlRegistry:
    """Registry backed by one YAML file.

    The whole file is parsed and indexed on each change, then swapped in with
    one assignment, so a request never sees half a registry; a file that fails
    validation leaves the running index in place.
    """

    def __init__(self, path: Path, *, poll_interval: float = 1.0) -> None:
        self._path = path
        self._poll_interval = poll_interval
        self._index = ClientIndex(load_registry_file(path))
        self._generation = 1
        self._changes = ChangeDetector([path])
        self._watcher: asyncio.Task[None] | None = None
        self.reload_failures = 0
        self.reloads_ok = 0

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
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="registry-watch")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                if self._changes.changed():
                    await self.reload()
            except Exception:
                # reload() keeps the running index on the errors it knows; anything
                # else must not end the watcher, or no later change is ever seen.
                self.reload_failures += 1
                log.exception("registry reload failed, keeping %d clients", len(self._index))

    async def reload(self) -> bool:
        try:
            index = ClientIndex(load_registry_file(self._path))
        except ConfigError as exc:
            self.reload_failures += 1
            log.error(
                "registry reload failed, keeping %d clients: %s",
                len(self._index),
                "; ".join(exc.problems),
            )
            return False
        self._index = index
        self._generation += 1
        self.reloads_ok += 1
        log.info("registry reloaded: %d clients from %s", len(index), self._path)
        return True

    async def match(
        self, identity: CertificateIdentity, *, pinned: bool, chains: ChainFacts | None = None
    ) -> MatchResult:
        return self._index.match(
            identity, pinned=pinned, now=dt.datetime.now(dt.UTC), chains=chains
        )

    async def get(self, client_id: str) -> Client | None:
        return self._index.get(client_id)

    async def list_clients(self) -> list[Client]:
        return self._index.clients()

    # Writes (CLI): rewrite the file atomically; the running gateways see the change.

    async def put(self, client: Client) -> None:
        clients = [c for c in self._index.clients() if c.client_id != client.client_id]
        clients.append(client)
        await self.replace_all(clients)

    async def remove(self, client_id: str) -> bool:
        clients = self._index.clients()
        kept = [c for c in clients if c.client_id != client_id]
        if len(kept) == len(clients):
            return False
        await self.replace_all(kept)
        return True

    async def replace_all(self, clients: list[Client]) -> None:
        try:
            index = ClientIndex(clients)
        except ValueError as exc:
            raise RegistryWriteError(str(exc)) from None
        text = dump_registry_document(clients)
        target = self._path.resolve()
        fd, tmp = tempfile.mkstemp(prefix=".clients-", suffix=".yaml", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                # mkstemp creates 0600; keep the file's own mode so that a gateway
                # running as another user can still read what the CLI wrote.
                with contextlib.suppress(FileNotFoundError):
                    os.fchmod(fh.fileno(), stat.S_IMODE(os.stat(target).st_mode))
                fh.write(text)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RegistryWriteError(f"{self._path}: cannot write: {exc}") from None
        self._index = index
        self._generation += 1
