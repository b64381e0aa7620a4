"""Accepted identities kept for a client's next connection (gateway/auth/recent.py).

The end-to-end rules (a removed client or CA refused on the next new
connection) are tests/test_auth.py's; these pin what the cache itself serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.auth.recent import RecentIdentities


@dataclass(frozen=True)
class Accepted:
    registry_generation: int = 1
    trust_generation: int = 1
    valid_until: float = float("inf")


def test_served_for_the_same_certificate_verdict_and_generations_only() -> None:
    recent: RecentIdentities[Accepted] = RecentIdentities()
    auth = Accepted()
    recent.put(b"der", True, auth)
    assert recent.get(b"der", True, 1, 1) is auth
    assert recent.get(b"der", False, 1, 1) is None  # this handshake did not verify it
    assert recent.get(b"other", True, 1, 1) is None


def test_a_registry_or_trust_change_drops_the_entry() -> None:
    recent: RecentIdentities[Accepted] = RecentIdentities()
    recent.put(b"der", True, Accepted())
    assert recent.get(b"der", True, 2, 1) is None  # a client added, removed or disabled
    assert len(recent) == 0
    recent.put(b"der", True, Accepted())
    assert recent.get(b"der", True, 1, 2) is None  # a CA, pin or CRL reloaded
    assert len(recent) == 0


def test_an_expired_certificate_or_an_old_entry_is_not_served() -> None:
    recent: RecentIdentities[Accepted] = RecentIdentities(max_age=60.0)
    recent.put(b"expired", True, Accepted(valid_until=time.time() - 1))
    assert recent.get(b"expired", True, 1, 1) is None
    aged: RecentIdentities[Accepted] = RecentIdentities(max_age=0.0)
    aged.put(b"der", True, Accepted())
    assert aged.get(b"der", True, 1, 1) is None


def test_a_full_cache_drops_its_older_half() -> None:
    recent: RecentIdentities[Accepted] = RecentIdentities(size=4)
    for i in range(4):
        recent.put(bytes([i]), True, Accepted())
    recent.put(b"new", True, Accepted())
    assert len(recent) == 3
    assert recent.get(bytes([0]), True, 1, 1) is None and recent.get(bytes([1]), True, 1, 1) is None
    assert recent.get(bytes([3]), True, 1, 1) is not None and recent.get(b"new", True, 1, 1)
