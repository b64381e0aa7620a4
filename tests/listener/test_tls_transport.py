"""gateway.listener.tls_transport: the plaintext transport leaves nothing behind.

The TLS layer makes one ``TlsTransport`` per connection, so anything it
leaked per instance grew the process by the number of connections ever made.
tests/test_compiled.py runs this on the mypyc-compiled build too, where the
leak was (the comment in ``TlsTransport.__init__``).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from gateway.listener.handshakes import HandshakeStats
from gateway.listener.tls_protocol import TlsServerProtocol
from gateway.listener.tls_transport import TlsTransport

MADE = 10_000


async def test_a_dropped_transport_frees_all_it_allocated() -> None:
    tls = TlsServerProtocol(
        lambda: None,  # type: ignore[arg-type,return-value]  # no connection is made
        asyncio.Protocol,
        handshake_timeout=5,
        observer=HandshakeStats(),
    )
    TlsTransport(tls)  # first-use allocations out of the count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(MADE):
            transport = TlsTransport(tls)
            assert transport.get_extra_info("peername", "none") == "none"
        del transport
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The leak kept a 64-byte dict each: 625 KiB for 10,000.
    assert kept < 16 * 1024, f"{kept / MADE:.1f} bytes kept per transport"
