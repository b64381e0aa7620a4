"""h2c with prior knowledge (RFC 9113 §3.3) on a plain listener: the preface picks the protocol.

An outbound listener takes the local app's plain calls.  A gRPC client there
speaks HTTP/2 without TLS and without Upgrade, starting with the connection
preface; anything else is HTTP/1.1.  This protocol reads just enough of the
first bytes to tell, hands the connection to the chosen protocol, and
replays what it read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4

ProtocolFactory = Callable[[], asyncio.Protocol]


class PrefaceSniffer(asyncio.Protocol):
    __slots__ = ("_buffer", "_http1", "_http2", "_transport")

    def __init__(self, http1: ProtocolFactory, http2: ProtocolFactory) -> None:
        self._http1 = http1
        self._http2 = http2
        self._buffer = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        seen = self._buffer[: len(PREFACE)]
        if seen == PREFACE:
            self._hand_over(self._http2())
        elif not PREFACE.startswith(seen):
            self._hand_over(self._http1())
        # else: a prefix of the preface so far; wait for more bytes

    def eof_received(self) -> bool | None:
        if self._buffer:
            self._hand_over(self._http1())  # a short request; HTTP/1.1 answers it
            return None
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        data, self._buffer = self._buffer, b""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not transport.is_closing():
            protocol.data_received(data)
