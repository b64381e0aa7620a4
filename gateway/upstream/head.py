"""The request head as one ``bytes`` object: what goes out first on an upstream connection."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import MultiMapping

from gateway.upstream.errors import UnsafeHeader

# Methods whose requests carry no body by default: no "Content-Length: 0".
_NO_DEFAULT_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


def request_head(method: str, target: str, headers: MultiMapping[str], has_body: bool) -> bytes:
    """``request_line_and_fields`` for a multidict of fields."""
    return request_line_and_fields(
        method,
        target,
        headers.items(),
        has_body,
        has_length="Content-Length" in headers,
        has_accept="Accept" in headers,
    )


def request_line_and_fields(
    method: str,
    target: str,
    fields: Iterable[tuple[str, str]],
    has_body: bool,
    *,
    has_length: bool,
    has_accept: bool,
) -> bytes:
    """The request line and header block, as aiohttp's client sent them.

    aiohttp added ``Accept: */*`` when the caller sent none, ``Content-Length:
    0`` for a body-less request whose method implies a body, and
    ``Transfer-Encoding: chunked`` for a body of unknown length (RFC 9112
    §6.1); a body with a ``Content-Length`` among ``fields`` is sent as is.
    ``has_length`` / ``has_accept``: ``fields`` hold those names.
    Raises UnsafeHeader for a line break in a value (RFC 9110 §5.5).
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields]
    if not has_accept:
        lines.append("Accept: */*")
    if has_body:
        if not has_length:
            lines.append("Transfer-Encoding: chunked")
    elif method not in _NO_DEFAULT_LENGTH and not has_length:
        lines.append("Content-Length: 0")
    # Values come from llhttp (which refuses CR and LF in them) or from the
    # gateway's own escaped values; this keeps that promise here.  ``in`` is
    # a memchr per line, where a count over the joined head walks it
    # character by character (twice the instructions of the whole check).
    for line in lines:
        if "\n" in line or "\r" in line:
            raise UnsafeHeader("line break in a forwarded header")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
