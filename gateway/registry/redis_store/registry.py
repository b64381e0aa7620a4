"""RedisRegistry: the client registry shared by a fleet of replicas.

Read path.  A certificate's lookup fields (keys.py) are answered from the
in-process cache when it is in sync; otherwise one Lua call fetches the index
entries and the documents they name.  Every candidate is then re-checked
against its own document, exactly as the YAML registry's index would (exact
lookup-key equality, then ``evaluate``): a stale or tampered index entry can
make a client harder to find, never let a certificate in.

Sync.  A background task subscribes to ``<prefix>changes``.  Every write
publishes, in the same atomic script, the fields and client_ids it touched;
the task drops them from the cache and bumps ``generation`` so that per-
connection results (auth.py) are re-checked.  A subscription that drops may
have missed messages, so on every (re)subscribe the task compares Redis's
(epoch, generation) with the last one it applied, and drops the whole cache
if they differ.  The cache is trusted only while subscribed.

Outage (fail closed).  While Redis is unreachable, a certificate whose match
is in the cache is served for ``max_stale`` seconds counted from the last
moment the cache was known current (the last message or PONG on the
subscription); any other lookup raises RegistryUnavailable (503).  When
``max_stale`` runs out, ``generation`` is bumped so that keep-alive connections
are re-checked too.  The task reconnects with jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ClusterDownError, ResponseError

from gateway.config import RegistryConfig
from gateway.identity import CertificateIdentity
from gateway.lifecycle import ReloadableBase
from gateway.registry.base import RegistryUnavailable, RegistryWriteError, already_exists
from gateway.registry.matching import (
    ChainFacts,
    MatchResult,
    evaluate,
    identity_lookup_keys,
    secret_lookup_key,
)
from gateway.registry.model import Client, ClientError, parse_client
from gateway.registry.redis_store.cache import LookupCache
from gateway.registry.redis_store.connection import REDIS_ERRORS, describe, explain, open_clients
from gateway.registry.redis_store.keys import (
    KeySchema,
    change_payload,
    client_fields,
    identity_fields,
    parse_change,
)
from gateway.registry.redis_store.scripts import LOOKUP, PUT, SWAP
from gateway.registry.redis_store.sentinel import MasterWatch

log = logging.getLogger("gateway.registry")

PING_INTERVAL = 1.0  # an idle subscription is pinged this often...
LIVENESS = 3.0  # ...and declared dead after this long without a word from Redis
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0  # recovery is noticed within this long of Redis coming back
WRITE_ATTEMPTS = 16
STAGING_TTL = 3600  # an import that dies half-way leaves nothing behind for long
CHUNK = 5000  # hash fields per HSET while staging an import

_REDIS_ERRORS = REDIS_ERRORS


class _SyncLost(Exception):
    pass


class _MasterMoved(Exception):
    """Sentinel names another master: follow it at once (not an outage)."""


def _is_outage(exc: BaseException) -> bool:
    """Redis unreachable, as opposed to one command refused (that fails one lookup only)."""
    return not isinstance(exc, ResponseError) or isinstance(exc, ClusterDownError)


def _text(value: bytes | str | None) -> str:
    """Replies are decoded (decode_responses=True); the types allow bytes too."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value or ""


def _document(client: Client) -> str:
    try:
        return json.dumps(client.to_dict(), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise RegistryWriteError(
            f"client {client.client_id}: claims: not representable as JSON: {exc}"
        ) from None


class RedisRegistry(ReloadableBase):
    """Registry (and WritableRegistry) on Redis; see docs/redis.md.

    A Reloadable part with no files: changes arrive by pub/sub, and SIGHUP
    (``reload``) drops the whole cache.
    """

    def __init__(self, config: RegistryConfig) -> None:
        super().__init__(name="registry", logger=log, failure="registry reload failed")
        self._config = config
        self._keys = KeySchema(config.key_prefix)
        self._clients = open_clients(config)
        self._redis = self._clients.commands
        self._lookup = self._redis.register_script(LOOKUP)
        self._put = self._redis.register_script(PUT)
        self._swap = self._redis.register_script(SWAP)
        self._cache = LookupCache(config.cache_size)
        self._description = describe(config)
        self._max_stale = config.max_stale
        self.cache_hits = 0  # read by /metrics
        self.cache_misses = 0
        self._generation = 1
        # Bumped whenever a cached answer may have changed: a fetch that raced
        # with an invalidation must not put its (maybe older) answer in the cache.
        self._invalidations = 0
        self._synced = False  # subscribed, and the cache checked against Redis
        self._reachable = True  # False: known down, so requests don't each try Redis
        self._synced_at = -math.inf  # monotonic time the cache was last known current
        self._seen: tuple[str, int] | None = None  # (epoch, generation) the cache reflects
        # Generations of this process's own writes, already invalidated locally:
        # their messages need not drop what was re-read since.
        self._own_writes: set[int] = set()
        self._first_sync = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        self._expiry: asyncio.TimerHandle | None = None
        self._master_watch = (
            MasterWatch(self._clients.sentinel, config.sentinel_master, self._redis)
            if self._clients.sentinel is not None and config.sentinel_master is not None
            else None
        )

    # ------------------------------------------------------------ protocol state

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ready(self) -> bool:
        return self._synced

    @property
    def description(self) -> str:
        return self._description

    @property
    def cached_entries(self) -> int:
        return len(self._cache)

    @property
    def applied_generation(self) -> int | None:
        """The Redis ``generation`` whose changes this replica has applied (None: not yet)."""
        return self._seen[1] if self._seen is not None else None

    async def start(self) -> None:
        if self._follower is not None:
            return
        self._follower = asyncio.create_task(self._follow(), name="registry-redis-sync")
        # Start serving at once even if Redis is down (requests get 503 and
        # /readyz says why); waiting a moment just avoids a not-ready blip.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_sync.wait(), self._config.connect_timeout)
        if not self._synced:
            log.warning("registry: %s not reachable yet; retrying", self._description)

    async def close(self) -> None:
        # Python 3.11's asyncio.wait_for can swallow a cancellation that lands as
        # the awaited call finishes (the follower's pubsub.aclose()); the flag
        # ends the follower's loop regardless.
        self._closing = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        with contextlib.suppress(*_REDIS_ERRORS):
            await self._clients.aclose()

    def watched_files(self) -> tuple[()]:
        return ()

    def rebuild(self) -> None:
        """SIGHUP: forget everything cached; the next lookups ask Redis."""
        self._drop_all()
        log.info("registry: cache dropped on reload; the next lookups ask %s", self._description)

    # ------------------------------------------------------------------- reads

    async def match(
        self, identity: CertificateIdentity, *, exact_only: bool, chains: ChainFacts | None = None
    ) -> MatchResult:
        fields = identity_fields(identity)
        if self._synced:
            cached = self._cache.candidates(fields)
            if cached is not None:
                self.cache_hits += 1
                return self._evaluate(cached, identity, exact_only, chains)
        elif not self._reachable:
            return self._stale_match(fields, identity, exact_only, chains)
        self.cache_misses += 1
        try:
            clients = await self._fetch(fields)
        except _REDIS_ERRORS as exc:
            if not _is_outage(exc):
                log.error("registry: lookup refused by Redis: %s", exc)
                raise RegistryUnavailable(f"{self._description}: {explain(exc)}") from None
            self._lost(f"lookup failed: {exc}")
            return self._stale_match(fields, identity, exact_only, chains)
        return self._evaluate(clients, identity, exact_only, chains)

    async def get(self, client_id: str) -> Client | None:
        if self._synced:
            known, client = self._cache.client(client_id)
            if known:
                return client
        elif not self._reachable:
            return self._stale_client(client_id)
        before = self._invalidations
        try:
            doc = _text(await self._redis.hget(self._keys.clients, client_id))
        except _REDIS_ERRORS as exc:
            if not _is_outage(exc):
                raise RegistryUnavailable(f"{self._description}: {explain(exc)}") from None
            self._lost(f"read failed: {exc}")
            return self._stale_client(client_id)
        client = self._parse(client_id, doc) if doc else None
        if self._may_cache(before):
            self._cache.store({}, {client_id: client})
        return client

    async def list_clients(self) -> list[Client]:
        clients: list[Client] = []
        try:
            async for client_id, doc in self._redis.hscan_iter(self._keys.clients, count=1000):
                client = self._parse(client_id, doc)
                if client is not None:
                    clients.append(client)
        except _REDIS_ERRORS as exc:
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
        before = self._invalidations
        reply: list[str] = await self._lookup(
            keys=[self._keys.index, self._keys.clients], args=list(fields)
        )
        named = {field: reply[i].split() for i, field in enumerate(fields)}
        docs: dict[str, Client | None] = {}
        for i in range(len(fields), len(reply) - 1, 2):
            client_id, doc = reply[i], reply[i + 1]
            docs[client_id] = self._parse(client_id, doc) if doc else None
        if self._may_cache(before):
            self._cache.store(named, docs)
        return [c for c in docs.values() if c is not None]

    def _may_cache(self, invalidations_before: int) -> bool:
        return self._synced and invalidations_before == self._invalidations

    def _parse(self, client_id: str, doc: str) -> Client | None:
        try:
            return parse_client(json.loads(doc))
        except (ValueError, ClientError) as exc:
            # Fail closed: a document this version cannot read matches nothing.
            log.error("registry: client %s in Redis is unreadable, skipped: %s", client_id, exc)
            return None

    def _within_max_stale(self) -> bool:
        return time.monotonic() - self._synced_at <= self._max_stale

    def _stale_match(
        self,
        fields: Sequence[str],
        identity: CertificateIdentity,
        exact_only: bool,
        chains: ChainFacts | None = None,
    ) -> MatchResult:
        # Only a positive answer is served stale: a certificate that matched
        # nobody may have been registered since, so it waits for Redis (503).
        if self._within_max_stale():
            cached = self._cache.candidates(fields)
            if cached is not None:
                result = self._evaluate(cached, identity, exact_only, chains)
                if result.matches:
                    return result
        raise RegistryUnavailable(f"{self._description} is unreachable")

    def _stale_client(self, client_id: str) -> Client | None:
        if self._within_max_stale():
            _, client = self._cache.client(client_id)
            if client is not None:
                return client
        raise RegistryUnavailable(f"{self._description} is unreachable")

    # ------------------------------------------------------------------ writes

    async def put(self, client: Client, *, replace: bool = True) -> None:
        await self._write(client.client_id, client, replace=replace)

    async def remove(self, client_id: str) -> bool:
        return await self._write(client_id, None)

    async def _write(self, client_id: str, client: Client | None, *, replace: bool = True) -> bool:
        new_doc = _document(client) if client is not None else ""
        new_fields = client_fields(client) if client is not None else []
        try:
            for _ in range(WRITE_ATTEMPTS):
                old_doc = _text(await self._redis.hget(self._keys.clients, client_id))
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
                    self._invalidate([*old_fields, *new_fields], [client_id])
                    if self._follower is not None and int(result) > (self.applied_generation or 0):
                        self._own_writes.add(int(result))
                    return True
                # Another writer changed this client in between: read it again.
        except _REDIS_ERRORS as exc:
            raise RegistryWriteError(
                f"client {client_id}: {self._description}: {explain(exc)}"
            ) from None
        raise RegistryWriteError(
            f"client {client_id}: kept changing under concurrent writes; try again"
        )

    def _fields_of_document(self, client_id: str, doc: str) -> list[str]:
        if not doc:
            return []
        old = self._parse(client_id, doc)
        # An unreadable document leaves its index entries behind; harmless, as
        # every candidate is re-checked against its document.
        return client_fields(old) if old is not None else []

    async def merge(self, clients: list[Client]) -> None:
        # The merged registry is swapped in whole, as an import always was.
        by_id = {c.client_id: c for c in await self.list_clients()}
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
                with contextlib.suppress(*_REDIS_ERRORS):
                    await self._redis.unlink(staged_clients, staged_index)
        except _REDIS_ERRORS as exc:
            raise RegistryWriteError(
                f"{self._description}: import failed: {explain(exc)}"
            ) from None
        if int(result) < 0:
            raise RegistryWriteError(
                f"{self._description}: import failed: the staged copy was incomplete"
            )
        self._drop_all()

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

    # -------------------------------------------------------------------- sync

    def _bump(self) -> None:
        self._generation += 1

    def _invalidate(self, fields: Iterable[str], client_ids: Iterable[str]) -> None:
        self._invalidations += 1
        self._cache.invalidate(fields, client_ids)
        self._bump()

    def _drop_all(self) -> None:
        self._invalidations += 1
        self._cache.clear()
        self._bump()

    def _lost(self, reason: str) -> None:
        if self._follower is None:
            return  # one-shot use (the CLI): nothing will reconnect, so keep trying
        was_up = self._synced or self._reachable
        self._synced = False
        self._reachable = False
        if not was_up:
            return
        log.warning(
            "registry: lost %s (%s); cached clients are served for %gs at most",
            self._description,
            reason,
            max(0.0, self._synced_at + self._max_stale - time.monotonic()),
        )
        # Connections re-check now (stale answers only), and again when the
        # stale window closes, so keep-alive connections get 503 from then on.
        self._bump()
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, self._synced_at + self._max_stale - time.monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay + 0.01, self._bump)

    async def _follow(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            pubsub: PubSub | None = None
            moved = False
            try:
                pubsub = await self._clients.pubsub()
                await self._listen(pubsub)
            except _MasterMoved as exc:
                log.warning("registry: Sentinel names %s as master now; resubscribing", exc)
                # Until the resync, lookups ask the new master rather than the cache.
                self._synced = False
                self._bump()
                moved = True
            except (*_REDIS_ERRORS, _SyncLost) as exc:
                self._lost(str(exc) or type(exc).__name__)
            except Exception as exc:
                # Whatever redis-py raises, this task must live on: without it the
                # replica would never be in sync again.
                log.exception("registry: subscription failed")
                self._lost(f"{type(exc).__name__}: {exc}")
            finally:
                if pubsub is not None:
                    # A typed alias: PubSub.aclose is annotated only from redis-py 8.2 on.
                    close_pubsub: Callable[[], Awaitable[None]] = pubsub.aclose
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(close_pubsub(), self._config.connect_timeout)
            if self._closing:
                return
            if moved:
                backoff = BACKOFF_MIN  # the new master is up: go there now
            elif self._seen is not None and self._synced_at > time.monotonic() - BACKOFF_MAX:
                backoff = BACKOFF_MIN  # it was working a moment ago: retry at once
            # Jitter: a fleet of replicas must not reconnect in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _listen(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(self._keys.channel)
        subscribed = False
        last_heard = time.monotonic()
        next_check = last_heard + PING_INTERVAL
        while True:
            if subscribed and not self._synced:
                raise _SyncLost("a lookup failed")
            if self._master_watch is not None and subscribed and time.monotonic() >= next_check:
                # Each health check, busy or idle: is this still the master Sentinel names?
                next_check = time.monotonic() + PING_INTERVAL
                new_master = await self._master_watch.moved_to(pubsub)
                if new_master is not None:
                    raise _MasterMoved(new_master)
            message: dict[str, Any] | None = await pubsub.get_message(timeout=PING_INTERVAL)
            now = time.monotonic()
            if message is None:
                if now - last_heard > LIVENESS:
                    raise _SyncLost(f"no answer from Redis for {LIVENESS:g}s")
                await pubsub.ping()
                continue
            last_heard = now
            kind = message["type"]
            if kind == "subscribe":
                # Also after a reconnect inside redis-py: messages may have been missed.
                await self._resync()
                subscribed = True
            elif kind == "message":
                self._apply(message["data"])
            if self._synced:
                # Redis answers in order: everything published before this
                # reply has been applied, so the cache is current as of now.
                self._synced_at = now

    async def _resync(self) -> None:
        epoch, generation = await self._redis.hmget(self._keys.meta, ["epoch", "generation"])
        state = (_text(epoch), int(generation or 0))
        if state != self._seen:
            if self._seen is not None:
                log.info("registry: changed while this replica was not listening; cache dropped")
            self._cache.clear()
            self._seen = state
        self._own_writes.clear()
        recovered = not self._synced and self._synced_at > -math.inf
        self._invalidations += 1
        self._synced = True
        self._reachable = True
        self._synced_at = time.monotonic()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._bump()
        self._first_sync.set()
        if recovered:
            log.info("registry: %s reachable again, in sync", self._description)

    def _apply(self, data: str) -> None:
        change = parse_change(data)
        seen = self._seen
        if change is None:
            log.warning("registry: unreadable change message, cache dropped: %.100s", data)
            self._drop_all()
            return
        if change.everything or seen is None or change.epoch != seen[0]:
            self._drop_all()
            self._seen = (change.epoch, change.generation)
            return
        if change.generation > seen[1] + 1:
            # A write that published nothing (a foreign tool?): trust nothing cached.
            self._drop_all()
        elif change.generation in self._own_writes:
            self._own_writes.discard(change.generation)
        else:
            self._invalidate(change.fields, change.client_ids)
        self._seen = (change.epoch, max(seen[1], change.generation))
        self._own_writes = {g for g in self._own_writes if g > self._seen[1]}
