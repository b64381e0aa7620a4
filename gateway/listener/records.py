"""TLS records: their sizes, and counting those that arrived complete from their 5-byte headers.

Every TLS record starts with a type byte, a 2-byte version and a 2-byte length
(RFC 8446 §5.1, RFC 5246 §6.2.1), also when encrypted.  One ``SSL_read`` returns
at most one record's plaintext, so knowing how many records are complete tells
the TLS pump how many ``recv`` calls have something to return: it stops there
instead of calling once more to be told ``WantReadError`` (an exception and a
16 KiB buffer per arriving segment, on the keep-alive hot path).
"""

from __future__ import annotations

HEADER = 5
# One TLS record carries at most 16 KiB of plaintext (RFC 8446 §5.1), and one
# SSL_read returns at most one record: a larger buffer would only be allocated.
RECORD_PLAINTEXT = 16384
# Ciphertext bytes per record beyond its plaintext: header 5, content type 1,
# AEAD tag 16 (TLS 1.3); TLS 1.2 GCM adds an 8-byte explicit nonce instead.
RECORD_OVERHEAD = 29
# A memory BIO keeps the largest buffer it ever held until its connection
# ends: one 256 KiB read from the socket written into the read BIO at once
# left 343 KiB with every idle connection that had uploaded, a 256 KiB
# response 297 KiB (bench/RESULTS.md, session 10).  So neither BIO is given
# more than one record's worth at a time, and what one keeps is bounded by
# about 22 KiB (OpenSSL grows a buffer to 4/3 of what it must hold).
BIO_SLICE = RECORD_PLAINTEXT
HANDSHAKE = 0x16  # the content type of a ClientHello's record

_PLAIN_HTTP_BODY = (
    b'{"error":"invalid_request","error_description":"plain HTTP sent to an HTTPS port (mTLS)"}'
)
# The answer to a plain HTTP request on a TLS port, in the clear, as NGINX
# answers one (its 400 "The plain HTTP request was sent to HTTPS port").
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)


def looks_like_plain_http(first: bytes) -> bool:
    """The connection's first bytes start a request line (a method), not a TLS record."""
    return first[:1] != bytes([HANDSHAKE]) and first[:1].isalpha()


class RecordFramer:
    """Follows record boundaries across arbitrary segment splits."""

    __slots__ = ("_partial", "_skip")

    def __init__(self) -> None:
        self._partial = b""  # the start of a record header split across segments
        self._skip = 0  # body bytes still to come of a record whose header was seen

    @property
    def inside_record(self) -> bool:
        """The bytes fed so far end inside a record (its header or its body)."""
        return bool(self._skip or self._partial)

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
