"""Connection pools for outbound calls, one per generation of client TLS material.

Keep-alive connections are what make mTLS affordable (one handshake, many
requests), but a pooled connection keeps presenting the certificate it was
opened with.  So each generation of client material gets its own aiohttp
session; when the material changes, the next lease opens a new session (new
connections, new certificate) and the old one is retired: requests still
running on it finish there, and it is closed, idle connections and all, when
the last of them returns its lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from gateway.outbound.client_tls import ClientMaterial, ClientTls

log = logging.getLogger("gateway.outbound")

KEEPALIVE_SECONDS = 30.0


@dataclass(eq=False)
class _Generation:
    material: ClientMaterial
    session: aiohttp.ClientSession
    leases: int = 0
    retired: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """A session to send on, and the client material its connections present."""

    session: aiohttp.ClientSession
    material: ClientMaterial


@dataclass(eq=False)
class SessionPool:
    tls: ClientTls
    _current: _Generation | None = None
    _draining: set[_Generation] = field(default_factory=set)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _closed: bool = False

    @staticmethod
    def _session() -> aiohttp.ClientSession:
        # Bodies pass through untouched (no decompression), cookies are never
        # stored, and proxy settings in the environment are ignored: the
        # destination is reached directly, as configured.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    def _current_generation(self) -> _Generation:
        if self._closed:
            raise RuntimeError("the outbound pool is closed")
        material = self.tls.material
        current = self._current
        if current is None or current.material is not material:
            if current is not None:
                log.info(
                    "outbound connection pool rebuilt for a new client certificate",
                    extra={"event": "outbound_pool_rotated", "thumbprint": material.thumbprint},
                )
                self._retire(current)
            current = self._current = _Generation(material, self._session())
        return current

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        generation = self._current_generation()
        generation.leases += 1
        try:
            yield Lease(generation.session, generation.material)
        finally:
            generation.leases -= 1
            if generation.retired and generation.leases == 0:
                self._close_later(generation)

    @property
    def generations_open(self) -> int:
        """Sessions not yet closed (the current one and any still draining)."""
        return len(self._draining) + len(self._closing) + (self._current is not None)

    def _retire(self, generation: _Generation) -> None:
        generation.retired = True
        self._draining.add(generation)
        if generation.leases == 0:
            self._close_later(generation)

    def _close_later(self, generation: _Generation) -> None:
        if generation not in self._draining:
            return  # close() got to it first
        self._draining.discard(generation)
        task = asyncio.get_running_loop().create_task(generation.session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown, after the listener stopped taking requests."""
        self._closed = True
        sessions = [g.session for g in self._draining]
        if self._current is not None:
            sessions.append(self._current.session)
        self._draining.clear()
        self._current = None
        for session in sessions:
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
