"""What one replica knows of the shared registry, and how far it may trust it.

The reads, the writes and the subscription all act on this one view: the
reads fill the cache, the writes and the change messages drop from it, and
the subscription says whether it is current.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from gateway.registry.redis_store.cache import LookupCache


class ReplicaView:
    """The cache, the ``generation`` callers re-check against, and the sync state."""

    def __init__(self, cache_size: int, *, max_stale: float) -> None:
        self.cache = LookupCache(cache_size)
        self.max_stale = max_stale
        self.generation = 1
        # Bumped whenever a cached answer may have changed: a fetch that raced
        # with an invalidation must not put its (maybe older) answer in the cache.
        self.invalidations = 0
        self.synced = False  # subscribed, and the cache checked against Redis
        self.reachable = True  # False: known down, so requests don't each try Redis
        self.synced_at = -math.inf  # monotonic time the cache was last known current
        self.seen: tuple[str, int] | None = None  # (epoch, generation) the cache reflects
        # Generations of this process's own writes, already invalidated locally:
        # their messages need not drop what was re-read since.
        self.own_writes: set[int] = set()
        # A subscription task runs; without one (the CLI's one-shot use) nothing
        # will reconnect, so an outage is never declared.
        self.following = False

    @property
    def applied_generation(self) -> int | None:
        """The Redis ``generation`` whose changes this replica has applied (None: not yet)."""
        return self.seen[1] if self.seen is not None else None

    def bump(self) -> None:
        self.generation += 1

    def invalidate(self, fields: Iterable[str], client_ids: Iterable[str]) -> None:
        self.invalidations += 1
        self.cache.invalidate(fields, client_ids)
        self.bump()

    def drop_all(self) -> None:
        self.invalidations += 1
        self.cache.clear()
        self.bump()

    def may_cache(self, invalidations_before: int) -> bool:
        return self.synced and invalidations_before == self.invalidations

    def within_max_stale(self) -> bool:
        return time.monotonic() - self.synced_at <= self.max_stale
