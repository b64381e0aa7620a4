"""Following ``<prefix>changes``: the cache is trusted only while subscribed.

Sync.  A background task subscribes to the channel.  Every write publishes,
in the same atomic script, the fields and client_ids it touched; the task
drops them from the cache and bumps ``generation`` so that per-connection
results (auth.py) are re-checked.  A subscription that drops may have missed
messages, so on every (re)subscribe the task compares Redis's (epoch,
generation) with the last one it applied, and drops the whole cache if they
differ.

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
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import PubSub

from gateway.registry.config import RegistryConfig
from gateway.registry.redis_store.connection import REDIS_ERRORS, RedisClients, reply_text
from gateway.registry.redis_store.keys import KeySchema, parse_change
from gateway.registry.redis_store.replica import ReplicaView
from gateway.registry.redis_store.sentinel import MasterWatch

log = logging.getLogger("gateway.registry")

PING_INTERVAL = 1.0  # an idle subscription is pinged this often...
LIVENESS = 3.0  # ...and declared dead after this long without a word from Redis
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0  # recovery is noticed within this long of Redis coming back


class _SyncLost(Exception):
    pass


class _MasterMoved(Exception):
    """Sentinel names another master: follow it at once (not an outage)."""


class ChangeSubscription:
    """The task that keeps ``view`` in sync with Redis, and declares outages."""

    def __init__(
        self,
        config: RegistryConfig,
        clients: RedisClients,
        keys: KeySchema,
        view: ReplicaView,
        description: str,
    ) -> None:
        self._config = config
        self._clients = clients
        self._redis = clients.commands
        self._keys = keys
        self._view = view
        self._description = description
        self._first_sync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._expiry: asyncio.TimerHandle | None = None
        self._master_watch = (
            MasterWatch(clients.sentinel, config.sentinel_master, self._redis)
            if clients.sentinel is not None and config.sentinel_master is not None
            else None
        )

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._follow(), name="registry-redis-sync")
        self._view.following = True
        # Start serving at once even if Redis is down (requests get 503 and
        # /readyz says why); waiting a moment just avoids a not-ready blip.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_sync.wait(), self._config.connect_timeout)
        if not self._view.synced:
            log.warning("registry: %s not reachable yet; retrying", self._description)

    async def close(self) -> None:
        # Python 3.11's asyncio.wait_for can swallow a cancellation that lands as
        # the awaited call finishes (the follower's pubsub.aclose()); the flag
        # ends the follower's loop regardless.
        self._closing = True
        if self._task is not None:
            task, self._task = self._task, None
            # Cancelled until it ends: a cancellation swallowed that way
            # inside redis-py (its connects and reads use wait_for too) would
            # leave the follower listening.  A test teardown right after a
            # Sentinel failover once hung here for good (session 7).
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._view.following = False
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def lost(self, reason: str) -> None:
        """Redis is unreachable: serve cached matches for ``max_stale`` at most."""
        view = self._view
        if not view.following:
            return  # one-shot use (the CLI): nothing will reconnect, so keep trying
        was_up = view.synced or view.reachable
        view.synced = False
        view.reachable = False
        if not was_up:
            return
        log.warning(
            "registry: lost %s (%s); cached clients are served for %gs at most",
            self._description,
            reason,
            max(0.0, view.synced_at + view.max_stale - time.monotonic()),
        )
        # Connections re-check now (stale answers only), and again when the
        # stale window closes, so keep-alive connections get 503 from then on.
        view.bump()
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, view.synced_at + view.max_stale - time.monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay + 0.01, view.bump)

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
                self._view.synced = False
                self._view.bump()
                moved = True
            except (*REDIS_ERRORS, _SyncLost) as exc:
                self.lost(str(exc) or type(exc).__name__)
            except Exception as exc:
                # Whatever redis-py raises, this task must live on: without it the
                # replica would never be in sync again.
                log.exception("registry: subscription failed")
                self.lost(f"{type(exc).__name__}: {exc}")
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
            elif (
                self._view.seen is not None
                and self._view.synced_at > time.monotonic() - BACKOFF_MAX
            ):
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
            if subscribed and not self._view.synced:
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
            if self._view.synced:
                # Redis answers in order: everything published before this
                # reply has been applied, so the cache is current as of now.
                self._view.synced_at = now

    async def _resync(self) -> None:
        view = self._view
        epoch, generation = await self._redis.hmget(self._keys.meta, ["epoch", "generation"])
        state = (reply_text(epoch), int(generation or 0))
        if state != view.seen:
            if view.seen is not None:
                log.info("registry: changed while this replica was not listening; cache dropped")
            view.cache.clear()
            view.seen = state
        view.own_writes.clear()
        recovered = not view.synced and view.synced_at > -math.inf
        view.invalidations += 1
        view.synced = True
        view.reachable = True
        view.synced_at = time.monotonic()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        view.bump()
        self._first_sync.set()
        if recovered:
            log.info("registry: %s reachable again, in sync", self._description)

    def _apply(self, data: str) -> None:
        view = self._view
        change = parse_change(data)
        seen = view.seen
        if change is None:
            log.warning("registry: unreadable change message, cache dropped: %.100s", data)
            view.drop_all()
            return
        if change.everything or seen is None or change.epoch != seen[0]:
            view.drop_all()
            view.seen = (change.epoch, change.generation)
            return
        if change.generation > seen[1] + 1:
            # A write that published nothing (a foreign tool?): trust nothing cached.
            view.drop_all()
        elif change.generation in view.own_writes:
            view.own_writes.discard(change.generation)
        else:
            view.invalidate(change.fields, change.client_ids)
        view.seen = (change.epoch, max(seen[1], change.generation))
        view.own_writes = {g for g in view.own_writes if g > view.seen[1]}
