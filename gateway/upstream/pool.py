"""Idle keep-alive connections per origin and TLS client context, and the connect path."""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque

from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import CertificateRefused, UpstreamTimeout, UpstreamUnreachable
from gateway.upstream.origin import Origin

IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept (aiohttp's keepalive_timeout)
# Idle connections kept per origin (limits.upstream_idle_connections): NGINX's
# advice for its upstream `keepalive` (the docs' example is 64).  Without a
# bound, a burst of 2,000 callers left 2,000 idle sockets for IDLE_TIMEOUT.
MAX_IDLE_PER_ORIGIN = 64

PoolKey = tuple[tuple[str, str, int], ssl.SSLContext | None]


class UpstreamPool:
    """Idle keep-alive connections per origin, at most ``max_idle`` each, and the connect path.

    Reuse is last in, first out, and a release beyond the bound closes the
    connection idle the longest, as NGINX's upstream ``keepalive`` cache
    does.  Why that pair: the connection just released is the one least
    likely to be closed by the upstream's own keep-alive timeout as we send
    on it (the race RFC 9112 §9.3 warns of), LIFO keeps a steady load on the
    fewest connections so the rest age out through the idle timeout, and the
    one evicted is the one nearest that timeout anyway.  ``max_idle`` 0 keeps
    none: every connection is closed after its exchange.

    A connection is pooled under its endpoint (scheme, host, port) *and* the
    TLS client context it was opened with: a pooled connection keeps
    presenting the certificate of its handshake, so a request that asks for
    another context (an outbound listener's reloaded client certificate)
    never gets it.  ``retire(context)`` closes that context's idle
    connections and makes those still in use close when they are released.
    """

    def __init__(
        self, *, idle_timeout: float = IDLE_TIMEOUT, max_idle: int = MAX_IDLE_PER_ORIGIN
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        # Per key, least recently used first: reuse pops the right end,
        # the bound and the sweeper take from the left.
        self._idle: dict[PoolKey, deque[UpstreamConnection]] = {}
        # Open connections per TLS context (None: plain): how a retired
        # context is seen to drain.  Entries go at zero.
        self._open: dict[ssl.SSLContext | None, int] = {}
        # Weak: a retired context is forgotten once nothing holds it.
        self._retired: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self._sweeper: asyncio.TimerHandle | None = None
        self._default_tls: ssl.SSLContext | None = None
        self._closed = False

    def idle_count(self, origin: Origin | None = None) -> int:
        """Idle connections held for ``origin`` (for every origin when None), any context."""
        if origin is None:
            return sum(len(idle) for idle in self._idle.values())
        endpoint = origin.endpoint
        return sum(len(idle) for (where, _), idle in self._idle.items() if where == endpoint)

    def open_count(self, context: ssl.SSLContext | None) -> int:
        """Connections open with ``context`` (None: plain HTTP), idle or in use."""
        return self._open.get(context, 0)

    async def acquire(
        self, origin: Origin, connect_timeout: float, *, tls: ssl.SSLContext | None = None
    ) -> UpstreamConnection:
        """An idle connection to ``origin`` opened with ``tls``, or a new one.

        ``tls`` is the client context for an ``https`` origin (certificate,
        trust anchors, pins); without one, the system trust store verifies
        the upstream.  It is ignored for plain ``http``.
        """
        conn = self.reuse(origin, tls=tls)
        if conn is not None:
            return conn
        context = (tls or self._system_trust()) if origin.tls else None
        return await self._connect(origin, context, connect_timeout)

    def reuse(
        self, origin: Origin, *, tls: ssl.SSLContext | None = None
    ) -> UpstreamConnection | None:
        """An idle connection to ``origin`` opened with ``tls``, now, or None.

        The common case of ``acquire``, without its coroutine: a keep-alive
        proxy takes a pooled connection on nearly every request.
        """
        context: ssl.SSLContext | None = None
        if origin.tls:
            context = tls or self._system_trust()
        idle = self._idle.get((origin.endpoint, context))
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return None

    def _system_trust(self) -> ssl.SSLContext:
        if self._default_tls is None:
            # Certificate and host name verification on, system trust store:
            # what aiohttp's default ssl=True did.
            self._default_tls = ssl.create_default_context()
        return self._default_tls

    async def _connect(
        self, origin: Origin, context: ssl.SSLContext | None, connect_timeout: float
    ) -> UpstreamConnection:
        if self._closed:
            raise UpstreamUnreachable("the upstream pool is closed")
        conn = UpstreamConnection(self, origin, context)
        try:
            async with asyncio.timeout(connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except ssl.SSLCertVerificationError as refused:
            # Before ssl.SSLError and ValueError, which it also is.
            raise CertificateRefused.of(refused) from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UpstreamUnreachable(f"cannot connect to the upstream: {exc}") from None
        return conn

    def retire(self, context: ssl.SSLContext) -> None:
        """No more reuse for ``context``: its idle connections close now, the rest when released."""
        self._retired.add(context)
        for key in [key for key in self._idle if key[1] is context]:
            for conn in self._idle.pop(key):
                conn.close()

    def release(self, conn: UpstreamConnection) -> None:
        context = conn.context
        # (A plain connection's None is not asked: WeakSet raises and catches
        # a TypeError for it, on every request.)
        if self._closed or self.max_idle <= 0 or (context is not None and context in self._retired):
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        while len(idle) >= self.max_idle:
            idle.popleft().close()  # the longest idle goes (see the class docstring)
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def opened(self, conn: UpstreamConnection) -> None:
        self._open[conn.context] = self._open.get(conn.context, 0) + 1

    def forget(self, conn: UpstreamConnection, *, idle: bool) -> None:
        """``conn`` is closed (``idle``: while it waited in the pool)."""
        left = self._open.get(conn.context, 0) - 1
        if left > 0:
            self._open[conn.context] = left
        else:
            self._open.pop(conn.context, None)
        if idle:
            pooled = self._idle.get(conn.key)
            if pooled is not None and conn in pooled:
                pooled.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.idle_timeout
        oldest: float | None = None
        for idle in self._idle.values():
            # Most recently used last: the stale ones are at the front.
            while idle and idle[0].idle_since <= cutoff:
                idle.popleft().close()
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = self.loop.call_at(oldest + self.idle_timeout, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
