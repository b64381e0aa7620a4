"""The transport a TLS-wrapped protocol writes plaintext to (``tls_protocol.py``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.listener.tls_protocol import TlsServerProtocol


class TlsTransport(asyncio.Transport):
    """The transport the wrapped protocol writes plaintext to."""

    __slots__ = ("_tls",)

    def __init__(self, tls: TlsServerProtocol) -> None:
        # No super().__init__(): asyncio.BaseTransport's only stores ``extra``
        # in its ``_extra`` slot, for the get_extra_info this class replaces.
        # Compiled by mypyc (setup.py), this class does not clear slots of
        # its interpreted base when freed, so the empty dict that __init__
        # made outlived every TLS connection: 64 bytes each, 2 MB after
        # 32,000 (tests/listener/test_tls_transport.py).
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.session
        if name == "sslcontext":
            return self._tls.context()
        if name == "peercert":
            return None  # the stdlib's dict form; the DER is on ssl_object
        transport = self._tls.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.send(data)

    def writelines(self, list_of_data: Any) -> None:
        self._tls.send(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False  # TLS has close_notify for the whole connection only

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot be half-closed for writing")

    def is_closing(self) -> bool:
        return self._tls.closing

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls.abort()

    def is_reading(self) -> bool:
        return self._tls.reading

    def pause_reading(self) -> None:
        self._tls.pause_reading()

    def resume_reading(self) -> None:
        self._tls.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        transport = self._tls.transport
        if transport is not None:
            transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        transport = self._tls.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        transport = self._tls.transport
        return transport.get_write_buffer_limits() if transport is not None else (0, 0)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._tls.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        app = self._tls.app
        assert app is not None
        return app
