"""Writing an HTTP/1.1 response head (RFC 9112 §4, §6), and what the parser refused.

The protocol adds the framing fields itself; the pipeline's ``Response``
carries end-to-end fields only.  ``Server`` is the product name without a
version (RFC 9110 §10.2.4), added where the answer has none: an upstream's
own ``Server`` is relayed as sent.  ``Date`` (RFC 9110 §6.6.1) likewise.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from gateway.pipeline.messages import Response

SERVER_NAME = "mtls-gateway"

_REASONS = {status.value: status.phrase for status in HTTPStatus}
# Statuses whose answers never carry a body (RFC 9110 §6.4.1, RFC 9112 §6.3).
NO_BODY_STATUSES = frozenset({101, 204, 304})

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class _DateField:
    """The ``Date`` line, formatted once per second rather than per answer."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


DATE = _DateField()


def reason_phrase(status: int, reason: str = "") -> str:
    return reason or _REASONS.get(status, "Unknown")


def response_head(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    *,
    framing: bytes,
    keep_alive_field: bytes = b"",
) -> bytes:
    """The status line and fields; ``framing`` is the Content-Length or chunked line.

    Values come from the upstream's parsed answer (llhttp refuses CR and LF in
    them) or from the gateway itself; a name or value carrying CR or LF is
    dropped here all the same, so no answer can split.
    """
    status_line = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status, reason).encode("latin-1"))
    has_server = has_date = False
    # A 101 names the protocol switched to in Connection/Upgrade (RFC 9110 §7.8).
    dropped = _FRAMING if status != 101 else _FRAMING - {"connection"}
    lines: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == "server":
            has_server = True
        elif lowered == "date":
            has_date = True
        line = f"{name}: {value}"
        # Two memchr scans of one short line (a count over the whole block
        # walks it character by character, and cost more).
        if "\n" not in line and "\r" not in line:
            lines.append(line)
    lines.append("")  # the last field's CRLF
    block = "\r\n".join(lines)
    try:
        fields = block.encode("utf-8", "surrogateescape")  # as it was decoded
    except UnicodeEncodeError:
        fields = block.encode("utf-8", "replace")
    return b"".join(
        (
            status_line,
            fields,
            b"" if has_server else _SERVER_LINE,
            b"" if has_date else DATE.line(),
            framing,
            keep_alive_field,
            b"\r\n",
        )
    )


_SERVER_LINE = b"Server: " + SERVER_NAME.encode() + b"\r\n"


def printable(text: str, limit: int = 200) -> str:
    """A parser's message as safe to echo: printable ASCII, white space folded, bounded."""
    cleaned = "".join(ch if " " <= ch <= "~" else " " for ch in str(text))
    return " ".join(cleaned.split())[:limit]


def head_of(response: Response, *, keep_alive: bool = True, framing: bytes | None = None) -> bytes:
    """A pipeline ``Response``'s head, framed by its whole body unless ``framing`` says otherwise."""
    if framing is None:
        framing = b"Content-Length: %d\r\n" % len(response.body)
    return response_head(
        response.status,
        response.reason,
        response.headers,
        framing=framing,
        keep_alive_field=b"" if keep_alive else b"Connection: close\r\n",
    )


def closing_answer(response: Response) -> bytes:
    """Head and body of an answer after which the connection closes (refusals)."""
    return head_of(response, keep_alive=False) + response.body
