"""Plaintext into a pyOpenSSL connection and ciphertext out of its write BIO.

The TLS pump (``tls_protocol.py``) calls these on the hot path: one ``send``
and one ``bio_read`` sized from what was sent, so no ``WantReadError`` is
raised to find the end of the ciphertext.  A write larger than ``BIO_SLICE``
goes in a record's worth at a time, each slice's ciphertext read out before
the next is sealed, so the write BIO never holds more than one record: a
memory BIO keeps the largest buffer it ever held for the rest of the
connection (``records.BIO_SLICE``).
"""

from __future__ import annotations

from OpenSSL import SSL

from gateway.listener.records import BIO_SLICE, RECORD_OVERHEAD, RECORD_PLAINTEXT

DRAIN_CHUNK = 65536


def _ciphertext_bound(size: int) -> int:
    # One header and tag per started record, and one record more of slack: a
    # read of exactly this size means more was queued (a KeyUpdate, say).
    return size + RECORD_OVERHEAD * (size // RECORD_PLAINTEXT + 2)


def _sealed(conn: SSL.Connection, size: int) -> bytes:
    """The ciphertext of ``size`` plaintext bytes just written, and anything queued with it."""
    expected = _ciphertext_bound(size)
    try:
        ciphertext = conn.bio_read(expected)
    except SSL.WantReadError:
        return b""
    if len(ciphertext) == expected:
        return ciphertext + drain(conn)
    return ciphertext


def seal(conn: SSL.Connection, data: bytes | bytearray | memoryview) -> bytes:
    """Encrypt at most ``BIO_SLICE`` bytes; raises ``SSL.Error`` if the connection failed."""
    # Partial writes are off (tls_context.py): SSL_write takes it all.
    written = conn.send(data)
    assert written == len(data), "partial TLS write"
    return _sealed(conn, written)


def seal_sliced(conn: SSL.Connection, data: bytes | bytearray | memoryview) -> list[bytes]:
    """Encrypt a write of any size, a record's worth at a time; the ciphertext in order."""
    view = memoryview(data)
    return [seal(conn, view[start : start + BIO_SLICE]) for start in range(0, len(view), BIO_SLICE)]


def drain(conn: SSL.Connection) -> bytes:
    """Everything queued in the write BIO (handshake flights, alerts, close_notify)."""
    chunks = []
    while True:
        try:
            chunks.append(conn.bio_read(DRAIN_CHUNK))
        except SSL.WantReadError:
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]
