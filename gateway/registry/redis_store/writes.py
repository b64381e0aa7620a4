"""Writes: one atomic script per client change, and imports staged then swapped in whole.

Every write publishes, in the same atomic script, the fields and client_ids
it touched (keys.py ``change_payload``), so that every replica's
subscription drops exactly those from its cache.  This process drops them
at once too (read-your-writes), before its own message comes back.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable

from gateway.registry.base import RegistryWriteError, already_exists
from gateway.registry.model import Client
from gateway.registry.redis_store.connection import (
    REDIS_ERRORS,
    CommandClient,
    explain,
    reply_text,
)
from gateway.registry.redis_store.keys import KeySchema, change_payload, client_fields
from gateway.registry.redis_store.reads import parse_document
from gateway.registry.redis_store.replica import ReplicaView
from gateway.registry.redis_store.scripts import PUT, SWAP

WRITE_ATTEMPTS = 16
STAGING_TTL = 3600  # an import that dies half-way leaves nothing behind for long
CHUNK = 5000  # hash fields per HSET while staging an import


def _document(client: Client) -> str:
    try:
        return json.dumps(client.to_dict(), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise RegistryWriteError(
            f"client {client.client_id}: claims: not representable as JSON: {exc}"
        ) from None


class Writer:
    """The WritableRegistry side; ``list_clients`` is the read side's, for ``merge``."""

    def __init__(
        self,
        redis: CommandClient,
        keys: KeySchema,
        view: ReplicaView,
        description: str,
        *,
        list_clients: Callable[[], Awaitable[list[Client]]],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._view = view
        self._description = description
        self._list_clients = list_clients
        self._put = redis.register_script(PUT)
        self._swap = redis.register_script(SWAP)

    async def put(self, client: Client, *, replace: bool = True) -> None:
        await self._write(client.client_id, client, replace=replace)

    async def remove(self, client_id: str) -> bool:
        return await self._write(client_id, None)

    async def _write(self, client_id: str, client: Client | None, *, replace: bool = True) -> bool:
        new_doc = _document(client) if client is not None else ""
        new_fields = client_fields(client) if client is not None else []
        try:
            for _ in range(WRITE_ATTEMPTS):
                old_doc = reply_text(await self._redis.hget(self._keys.clients, client_id))
                if not old_doc and client is None:
                    return False
                if old_doc and not replace:
                    # The script writes only if the document is still old_doc: atomic.
                    raise RegistryWriteError(already_exists(client_id))
                old_fields = self._fields_of_document(client_id, old_doc)
                payload = change_payload([client_id], [*old_fields, *new_fields])
                result = await self._put(
                    keys=[self._keys.clients, self._keys.index, self._keys.meta],
                    args=[
                        self._keys.channel,
                        client_id,
                        old_doc,
                        new_doc,
                        secrets.token_hex(8),
                        payload,
                        len(old_fields),
                        *old_fields,
                        *new_fields,
                    ],
                )
                if int(result) >= 0:
                    # Read-your-writes in this process, before the message comes back.
                    view = self._view
                    view.invalidate([*old_fields, *new_fields], [client_id])
                    if view.following and int(result) > (view.applied_generation or 0):
                        view.own_writes.add(int(result))
                    return True
                # Another writer changed this client in between: read it again.
        except REDIS_ERRORS as exc:
            raise RegistryWriteError(
                f"client {client_id}: {self._description}: {explain(exc)}"
            ) from None
        raise RegistryWriteError(
            f"client {client_id}: kept changing under concurrent writes; try again"
        )

    def _fields_of_document(self, client_id: str, doc: str) -> list[str]:
        if not doc:
            return []
        old = parse_document(client_id, doc)
        # An unreadable document leaves its index entries behind; harmless, as
        # every candidate is re-checked against its document.
        return client_fields(old) if old is not None else []

    async def merge(self, clients: list[Client]) -> None:
        # The merged registry is swapped in whole, as an import always was.
        by_id = {c.client_id: c for c in await self._list_clients()}
        by_id.update({c.client_id: c for c in clients})
        await self.replace_all(list(by_id.values()))

    async def replace_all(self, clients: list[Client]) -> None:
        """Build the new registry under a private name, then swap it in atomically."""
        docs: dict[str, str] = {}
        for c in clients:
            if c.client_id in docs:
                raise RegistryWriteError(f"client {c.client_id}: duplicate client_id")
            docs[c.client_id] = _document(c)
        index: dict[str, list[str]] = {}
        for c in clients:
            for field in client_fields(c):
                index.setdefault(field, []).append(c.client_id)
        staged_clients, staged_index = self._keys.staging(secrets.token_hex(8))
        try:
            try:
                await self._stage(staged_clients, docs.items())
                await self._stage(staged_index, ((f, " ".join(ids)) for f, ids in index.items()))
                result = await self._swap(
                    keys=[
                        self._keys.clients,
                        self._keys.index,
                        self._keys.meta,
                        staged_clients,
                        staged_index,
                    ],
                    args=[self._keys.channel, secrets.token_hex(8), len(docs), len(index)],
                )
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._redis.unlink(staged_clients, staged_index)
        except REDIS_ERRORS as exc:
            raise RegistryWriteError(
                f"{self._description}: import failed: {explain(exc)}"
            ) from None
        if int(result) < 0:
            raise RegistryWriteError(
                f"{self._description}: import failed: the staged copy was incomplete"
            )
        self._view.drop_all()

    async def _stage(self, key: str, items: Iterable[tuple[str, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        batch: list[str] = []
        queued = 0
        for field, value in items:
            batch += (field, value)
            if len(batch) >= 2 * CHUNK:
                pipe.hset(key, items=batch)
                batch = []
                queued += 1
                if queued >= 20:  # bound the client-side buffer for huge imports
                    pipe.expire(key, STAGING_TTL)
                    await pipe.execute()
                    pipe = self._redis.pipeline(transaction=False)
                    queued = 0
        if batch:
            pipe.hset(key, items=batch)
        pipe.expire(key, STAGING_TTL)
        await pipe.execute()
