"""Counting the TLS records that have arrived complete, from their 5-byte headers.

Every TLS record starts with a type byte, a 2-byte version and a 2-byte length
(RFC 8446 §5.1, RFC 5246 §6.2.1), also when encrypted.  One ``SSL_read`` returns
at most one record's plaintext, so knowing how many records are complete tells
the TLS pump how many ``recv`` calls have something to return: it stops there
instead of calling once more to be told ``WantReadError`` (an exception and a
16 KiB buffer per arriving segment, on the keep-alive hot path).
"""

from __future__ import annotations

HEADER = 5


class RecordFramer:
    """Follows record boundaries across arbitrary segment splits."""

    __slots__ = ("_partial", "_skip")

    def __init__(self) -> None:
        self._partial = b""  # the start of a record header split across segments
        self._skip = 0  # body bytes still to come of a record whose header was seen

    def feed(self, data: bytes) -> int:
        """Records completed by ``data``."""
        buf = self._partial + data if self._partial else data
        size = len(buf)
        pos = self._skip
        count = 0
        if pos:
            if pos > size:
                self._skip = pos - size
                return 0
            count = 1
        while pos + HEADER <= size:
            end = pos + HEADER + ((buf[pos + 3] << 8) | buf[pos + 4])
            if end > size:
                self._skip = end - size
                self._partial = b""
                return count
            count += 1
            pos = end
        self._skip = 0
        self._partial = buf[pos:]
        return count
