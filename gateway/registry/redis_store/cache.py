"""The in-process cache of a replica: what Redis said, until an invalidation says otherwise.

Two bounded LRUs, so that a hit costs no round trip: index field → client_ids,
and client_id → parsed Client.  Answers that name nobody (a thumbprint field
for a CA-issued certificate, an unknown client_id) are cached too, in their own
LRU so that they never push out positive entries; they are dropped on the same
invalidations, so a client added later is seen at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from gateway.registry.model import Client

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        if key in self._data:
            self._data.move_to_end(key)
            return True
        return False

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._size:
            self._data.popitem(last=False)

    def discard(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


class LookupCache:
    __slots__ = ("_absent_fields", "_absent_ids", "_clients", "_fields")

    def __init__(self, size: int) -> None:
        self._fields: _Lru[str, tuple[str, ...]] = _Lru(size)
        self._clients: _Lru[str, Client] = _Lru(size)
        self._absent_fields: _Lru[str, bool] = _Lru(size)
        self._absent_ids: _Lru[str, bool] = _Lru(size)

    def __len__(self) -> int:
        return len(self._fields) + len(self._clients)

    def candidates(self, fields: Sequence[str]) -> list[Client] | None:
        """Clients named by any of the fields, or None unless every answer is cached."""
        ids: dict[str, None] = {}
        for field in fields:
            named = self._fields.get(field)
            if named is not None:
                ids.update(dict.fromkeys(named))
            elif field not in self._absent_fields:
                return None
        clients: list[Client] = []
        for client_id in ids:
            client = self._clients.get(client_id)
            if client is None:
                return None
            clients.append(client)
        return clients

    def client(self, client_id: str) -> tuple[bool, Client | None]:
        """(known, client): known is False when Redis must be asked."""
        client = self._clients.get(client_id)
        if client is not None:
            return True, client
        return client_id in self._absent_ids, None

    def store(
        self, fields: Mapping[str, Sequence[str]], clients: Mapping[str, Client | None]
    ) -> None:
        for field, ids in fields.items():
            if ids:
                self._fields.put(field, tuple(ids))
                self._absent_fields.discard(field)
            else:
                self._absent_fields.put(field, True)
                self._fields.discard(field)
        for client_id, client in clients.items():
            if client is not None:
                self._clients.put(client_id, client)
                self._absent_ids.discard(client_id)
            else:
                self._absent_ids.put(client_id, True)
                self._clients.discard(client_id)

    def invalidate(self, fields: Iterable[str], client_ids: Iterable[str]) -> None:
        for field in fields:
            self._fields.discard(field)
            self._absent_fields.discard(field)
        for client_id in client_ids:
            self._clients.discard(client_id)
            self._absent_ids.discard(client_id)

    def clear(self) -> None:
        self._fields.clear()
        self._clients.clear()
        self._absent_fields.clear()
        self._absent_ids.clear()
