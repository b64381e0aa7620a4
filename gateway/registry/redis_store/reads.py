"""Lookups: from the in-process cache when it is in sync, otherwise one Lua call.

A certificate's lookup fields (keys.py) are answered from the cache when it
is in sync; otherwise one Lua call fetches the index entries and the
documents they name.  Every candidate is then re-checked against its own
document, exactly as the YAML registry's index would (exact lookup-key
equality, then ``evaluate``): a stale or tampered index entry can make a
client harder to find, never let a certificate in.

While Redis is unreachable, a certificate whose match is in the cache is
served for ``max_stale`` seconds (fail closed: see subscription.py); any
other lookup raises RegistryUnavailable (503).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable, Sequence

from gateway.registry.base import RegistryUnavailable
from gateway.registry.matching import (
    ChainFacts,
    MatchResult,
    evaluate,
    identity_lookup_keys,
    secret_lookup_key,
)
from gateway.registry.model import Client, ClientError, parse_client
from gateway.registry.redis_store.connection import (
    REDIS_ERRORS,
    CommandClient,
    explain,
    is_outage,
    reply_text,
)
from gateway.registry.redis_store.keys import KeySchema, identity_fields
from gateway.registry.redis_store.replica import ReplicaView
from gateway.registry.redis_store.scripts import LOOKUP
from gateway.trust.identity import CertificateIdentity

log = logging.getLogger("gateway.registry")


def parse_document(client_id: str, doc: str) -> Client | None:
    try:
        return parse_client(json.loads(doc))
    except (ValueError, ClientError) as exc:
        # Fail closed: a document this version cannot read matches nothing.
        log.error("registry: client %s in Redis is unreadable, skipped: %s", client_id, exc)
        return None


class Reader:
    """The read side of the Registry protocol; ``on_outage`` reports Redis unreachable."""

    def __init__(
        self,
        redis: CommandClient,
        keys: KeySchema,
        view: ReplicaView,
        description: str,
        *,
        on_outage: Callable[[str], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._view = view
        self._description = description
        self._on_outage = on_outage
        self._lookup = redis.register_script(LOOKUP)
        self.cache_hits = 0  # read by /metrics
        self.cache_misses = 0

    async def match(
        self, identity: CertificateIdentity, *, exact_only: bool, chains: ChainFacts | None = None
    ) -> MatchResult:
        view = self._view
        fields = identity_fields(identity)
        if view.synced:
            cached = view.cache.candidates(fields)
            if cached is not None:
                self.cache_hits += 1
                return self._evaluate(cached, identity, exact_only, chains)
        elif not view.reachable:
            return self._stale_match(fields, identity, exact_only, chains)
        self.cache_misses += 1
        try:
            clients = await self._fetch(fields)
        except REDIS_ERRORS as exc:
            if not is_outage(exc):
                log.error("registry: lookup refused by Redis: %s", exc)
                raise RegistryUnavailable(f"{self._description}: {explain(exc)}") from None
            self._on_outage(f"lookup failed: {exc}")
            return self._stale_match(fields, identity, exact_only, chains)
        return self._evaluate(clients, identity, exact_only, chains)

    async def get(self, client_id: str) -> Client | None:
        view = self._view
        if view.synced:
            known, client = view.cache.client(client_id)
            if known:
                return client
        elif not view.reachable:
            return self._stale_client(client_id)
        before = view.invalidations
        try:
            doc = reply_text(await self._redis.hget(self._keys.clients, client_id))
        except REDIS_ERRORS as exc:
            if not is_outage(exc):
                raise RegistryUnavailable(f"{self._description}: {explain(exc)}") from None
            self._on_outage(f"read failed: {exc}")
            return self._stale_client(client_id)
        client = parse_document(client_id, doc) if doc else None
        if view.may_cache(before):
            view.cache.store({}, {client_id: client})
        return client

    async def list_clients(self) -> list[Client]:
        clients: list[Client] = []
        try:
            async for client_id, doc in self._redis.hscan_iter(self._keys.clients, count=1000):
                client = parse_document(client_id, doc)
                if client is not None:
                    clients.append(client)
        except REDIS_ERRORS as exc:
            raise RegistryUnavailable(f"{self._description}: {explain(exc)}") from None
        return clients

    def _evaluate(
        self,
        clients: Iterable[Client],
        identity: CertificateIdentity,
        exact_only: bool,
        chains: ChainFacts | None = None,
    ) -> MatchResult:
        wanted = set(identity_lookup_keys(identity))
        candidates = [
            (client, secret)
            for client in clients
            for secret in client.secrets
            if secret_lookup_key(secret) in wanted
        ]
        return evaluate(
            candidates, identity, exact_only=exact_only, now=dt.datetime.now(dt.UTC), chains=chains
        )

    async def _fetch(self, fields: Sequence[str]) -> list[Client]:
        before = self._view.invalidations
        reply: list[str] = await self._lookup(
            keys=[self._keys.index, self._keys.clients], args=list(fields)
        )
        named = {field: reply[i].split() for i, field in enumerate(fields)}
        docs: dict[str, Client | None] = {}
        for i in range(len(fields), len(reply) - 1, 2):
            client_id, doc = reply[i], reply[i + 1]
            docs[client_id] = parse_document(client_id, doc) if doc else None
        if self._view.may_cache(before):
            self._view.cache.store(named, docs)
        return [c for c in docs.values() if c is not None]

    def _stale_match(
        self,
        fields: Sequence[str],
        identity: CertificateIdentity,
        exact_only: bool,
        chains: ChainFacts | None = None,
    ) -> MatchResult:
        # Only a positive answer is served stale: a certificate that matched
        # nobody may have been registered since, so it waits for Redis (503).
        if self._view.within_max_stale():
            cached = self._view.cache.candidates(fields)
            if cached is not None:
                result = self._evaluate(cached, identity, exact_only, chains)
                if result.matches:
                    return result
        raise RegistryUnavailable(f"{self._description} is unreachable")

    def _stale_client(self, client_id: str) -> Client | None:
        if self._view.within_max_stale():
            _, client = self._view.cache.client(client_id)
            if client is not None:
                return client
        raise RegistryUnavailable(f"{self._description} is unreachable")
