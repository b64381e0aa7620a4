"""The outbound listener's connections: the upstream pool, and the client material they present.

Keep-alive connections are what make mTLS affordable (one handshake, many
requests), but a pooled connection keeps presenting the certificate it was
opened with.  The gateway's upstream pool (gateway/upstream/) keys its
connections by TLS client context as well as by origin, and each
generation of client material has contexts of its own; so once the
material changes, new requests get new connections presenting the new
certificate, and the old material's contexts are retired: their idle
connections close at once, and those still carrying a request close when
it ends.
"""

from __future__ import annotations

import logging

from gateway.outbound.client_tls import ClientMaterial, ClientTls, Trust
from gateway.upstream import Origin, UpstreamConnection, UpstreamPool

log = logging.getLogger("gateway.outbound")


class OutboundPool:
    def __init__(self, tls: ClientTls, *, upstreams: UpstreamPool | None = None) -> None:
        self.tls = tls
        self._upstreams = upstreams
        self._owned = upstreams is None  # made here (lazily, on the loop), closed here
        self._material: ClientMaterial | None = None
        self._closed = False

    @property
    def upstreams(self) -> UpstreamPool:
        if self._upstreams is None:
            self._upstreams = UpstreamPool()  # needs the running loop: made on first use
        return self._upstreams

    def material(self) -> ClientMaterial:
        """The client material to present now; a change retires the previous one's contexts."""
        if self._closed:
            raise RuntimeError("the outbound pool is closed")
        material = self.tls.material
        previous = self._material
        if previous is not material:
            self._material = material
            if previous is not None:
                log.info(
                    "outbound connections rebuilt for a new client certificate",
                    extra={"event": "outbound_pool_rotated", "thumbprint": material.thumbprint},
                )
                for context in previous.contexts.values():
                    self.upstreams.retire(context)
        return material

    async def acquire(
        self, origin: Origin, material: ClientMaterial, trust: Trust, connect_timeout: float
    ) -> UpstreamConnection:
        """A connection to ``origin`` presenting ``material``'s certificate, verified by ``trust``."""
        return await self.upstreams.acquire(origin, connect_timeout, tls=material.context(trust))

    async def close(self) -> None:
        """At shutdown, after the listener stopped taking requests."""
        self._closed = True
        if self._owned and self._upstreams is not None:
            await self._upstreams.close()
