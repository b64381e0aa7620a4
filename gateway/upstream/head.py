"""The request head as one ``bytes`` object: what goes out first on an upstream connection."""

from __future__ import annotations

from multidict import MultiMapping

from gateway.upstream.errors import UnsafeHeader

# Methods whose requests carry no body by default: no "Content-Length: 0".
_NO_DEFAULT_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


def request_head(method: str, target: str, headers: MultiMapping[str], has_body: bool) -> bytes:
    """The request line and header block, as aiohttp's client sent them.

    aiohttp added ``Accept: */*`` when the caller sent none, ``Content-Length:
    0`` for a body-less request whose method implies a body, and
    ``Transfer-Encoding: chunked`` for a body of unknown length (RFC 9112
    §6.1); a body with a ``Content-Length`` in ``headers`` is sent as is.
    Raises UnsafeHeader for a line break in a value (RFC 9110 §5.5).
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if "Accept" not in headers:
        lines.append("Accept: */*")
    if has_body:
        if "Content-Length" not in headers:
            lines.append("Transfer-Encoding: chunked")
    elif method not in _NO_DEFAULT_LENGTH and "Content-Length" not in headers:
        lines.append("Content-Length: 0")
    lines.append("\r\n")
    head = "\r\n".join(lines)
    # Values come from llhttp (which refuses CR and LF in them) or from the
    # gateway's own escaped values; one count keeps that promise here.
    if head.count("\n") != len(lines) or head.count("\r") != len(lines):
        raise UnsafeHeader("line break in a forwarded header")
    return head.encode("utf-8", "surrogateescape")
