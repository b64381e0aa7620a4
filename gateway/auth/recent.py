"""The identities of certificates seen lately, for clients that open connection after connection.

A client without keep-alive (or behind a load balancer that spreads its
requests) presents the same certificate on every new TLS connection.  What
the gateway decides about it depends only on the certificate, on whether
this handshake verified it, and on the registry and trust material in force,
each of which carries a generation that moves on every change.  So an
accepted identity is kept, keyed on (DER, verified), for the next connection:
it is served only at the same registry and trust generations, before the
certificate's notAfter, and for at most ``max_age`` seconds (what a
generation does not see: an issuer in the chain expiring).  Refusals are
never kept: each is logged and counted where it happens.
"""

from __future__ import annotations

import time
from typing import Generic, Protocol, TypeVar


class Generational(Protocol):
    """What ``gateway.auth.outcome.ConnectionAuth`` offers this cache."""

    @property
    def registry_generation(self) -> int: ...

    @property
    def trust_generation(self) -> int: ...

    @property
    def valid_until(self) -> float: ...


T = TypeVar("T", bound=Generational)


class RecentIdentities(Generic[T]):
    """At most ``size`` accepted identities; the oldest half goes when it is full.

    1,024 by default, as many as trust/identity.py keeps parsed certificates:
    an entry holds its identity, so more would only keep more of them alive.
    """

    __slots__ = ("_entries", "max_age", "size")

    def __init__(self, size: int = 1024, max_age: float = 60.0) -> None:
        self.size = size
        self.max_age = max_age
        self._entries: dict[tuple[bytes, bool], tuple[float, T]] = {}

    def get(
        self, der: bytes, verified: bool, registry_generation: int, trust_generation: int
    ) -> T | None:
        entry = self._entries.get((der, verified))
        if entry is None:
            return None
        stored_at, auth = entry
        now = time.time()
        if (
            auth.registry_generation == registry_generation
            and auth.trust_generation == trust_generation
            and now < auth.valid_until
            and now - stored_at < self.max_age
        ):
            return auth
        del self._entries[(der, verified)]
        return None

    def put(self, der: bytes, verified: bool, auth: T) -> None:
        entries = self._entries
        if len(entries) >= self.size:
            # Insertion order is age order: drop the older half at once.
            for key in list(entries)[: self.size // 2]:
                del entries[key]
        entries[(der, verified)] = (time.time(), auth)

    def __len__(self) -> int:
        return len(self._entries)
