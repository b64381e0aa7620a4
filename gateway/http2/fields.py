"""Header fields between HTTP/2 header blocks and the pipeline's messages (RFC 9113 §8.2, §8.3).

Inbound blocks are validated by h2 (lowercase names, pseudo-fields first and
well formed, no connection-specific field, ``te`` only ``trailers``); what is
left here is turning them into the pipeline's shape and back.  Outbound, the
connection-specific fields an HTTP/1.1 upstream may send are dropped (RFC 9113
§8.2.2: a message carrying one is malformed), names are lowercased (§8.2.1),
and the framing fields are the protocol's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate

from multidict import CIMultiDict

from gateway.pipeline.messages import Connection, Request, RequestBody
from gateway.pipeline.target import split_target

SERVER_NAME = b"mtls-gateway"

# RFC 9113 §8.2.2; "te" is allowed only as "te: trailers" (requests).
CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
# Framing the protocol writes itself (content-length from the answer's body).
_OWN_FIELDS = CONNECTION_SPECIFIC | {"content-length"}
# RFC 9113 §6.5.2: each field counts its name, its value and 32 octets.
FIELD_OVERHEAD = 32


def _text(value: bytes) -> str:
    # As the HTTP/1.1 protocol decodes: bytes that are not UTF-8 survive a
    # round trip to the upstream unchanged.
    return value.decode("utf-8", "surrogateescape")


def _octets(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


def header_list_size(fields: Iterable[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) + FIELD_OVERHEAD for name, value in fields)


@dataclass(slots=True)
class RequestHead:
    method: str
    scheme: str
    authority: str
    target: str  # :path as sent ("" for CONNECT)
    headers: CIMultiDict[str]

    def request(
        self,
        body: RequestBody,
        *,
        ended: bool,
        remote: str,
        scheme: str,
        transport: Connection | None,
        send_continue: Callable[[], None],
    ) -> Request:
        """The pipeline's ``Request``; the path decoded as HTTP/1.1's is (``split_target``)."""
        target = self.target if self.method != "CONNECT" else self.authority
        path, query = split_target(target) if target else ("", "")
        expects = self.headers.get("Expect", "").lower() == "100-continue"
        return Request(
            method=self.method,
            raw_path=target,
            path=path,
            query_string=query,
            headers=self.headers,
            version=(2, 0),
            remote=remote,
            scheme=scheme,
            transport=transport,
            content=body,
            body_exists=not ended,
            protocol="HTTP/2",
            send_continue=send_continue if expects else None,
        )


def request_head(block: Sequence[tuple[bytes, bytes]]) -> RequestHead:
    """A validated request block as the pipeline reads it.

    ``:authority`` becomes ``Host`` (RFC 9113 §8.3.1: it takes the place of
    Host, and h2 refuses a block where both disagree).  Cookie fields, which
    HTTP/2 may split into one field per pair (§8.2.3), are joined with "; "
    before the request goes on to an HTTP/1.1 pipeline.
    """
    pseudo: dict[bytes, bytes] = {}
    headers: CIMultiDict[str] = CIMultiDict()
    cookies: list[str] = []
    host: str | None = None
    for name, value in block:
        if name.startswith(b":"):
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(_text(value))
        elif name == b"host":
            host = _text(value)
        else:
            headers.add(_text(name), _text(value))
    authority = _text(pseudo[b":authority"]) if b":authority" in pseudo else host
    if authority is not None:
        headers.add("Host", authority)
    if cookies:
        headers.add("Cookie", "; ".join(cookies))
    return RequestHead(
        method=_text(pseudo.get(b":method", b"")),
        scheme=_text(pseudo.get(b":scheme", b"")),
        authority=authority or "",
        target=_text(pseudo.get(b":path", b"")),
        headers=headers,
    )


class _DateField:
    """``date`` (RFC 9110 §6.6.1), formatted once per second rather than per answer."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


_DATE = _DateField()


def end_to_end(fields: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Fields an HTTP/2 block may carry: lowercase names, no connection-specific
    field nor any named in ``Connection`` (RFC 9110 §7.6.1), no CR/LF/NUL."""
    named: set[str] = set()
    kept: list[tuple[str, str]] = []
    for name, value in fields:
        lowered = name.lower()
        if lowered == "connection":
            named.update(token.strip().lower() for token in value.split(","))
        elif lowered == "te" and value.strip().lower() != "trailers":
            continue
        elif lowered not in _OWN_FIELDS and not lowered.startswith(":"):
            kept.append((lowered, value))
    result: list[tuple[bytes, bytes]] = []
    for name, value in kept:
        if name in named or any(c in value for c in "\r\n\x00"):
            continue
        result.append((name.encode("ascii", "replace"), _octets(value)))
    return result


def response_block(
    status: int, fields: Iterable[tuple[str, str]], *, content_length: int | None
) -> list[tuple[bytes, bytes]]:
    """``:status`` first (RFC 9113 §8.3.2), the end-to-end fields, then framing.

    ``server`` is the product name without a version (RFC 9110 §10.2.4) where
    the answer has none: an upstream's own is relayed as sent.
    """
    block = [(b":status", str(status).encode("ascii")), *end_to_end(fields)]
    names = {name for name, _ in block}
    if b"server" not in names:
        block.append((b"server", SERVER_NAME))
    if b"date" not in names:
        block.append((b"date", _DATE.value()))
    if content_length is not None:
        block.append((b"content-length", str(content_length).encode("ascii")))
    return block


def trailer_block(fields: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Trailers carry no pseudo-field and nothing about framing (RFC 9113 §8.1)."""
    return end_to_end(fields)
