"""Reading requests off an HTTP/1.1 connection with httptools (llhttp), within the head limits.

The reader is httptools' callback target: it collects the request line and
fields, builds each ``Request`` when its head is complete, and feeds its body.
It holds the head to ``limits.max_header_bytes`` per line,
``limits.max_headers`` fields and 8 times the line limit in all: httptools buffers
a line until it ends, so the bytes fed while a head is incomplete are counted
and cut here, before a 100 MB header line is held in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict

from gateway.http1.head import printable
from gateway.pipeline.malformed import MalformedBody
from gateway.pipeline.messages import Connection as Transport
from gateway.pipeline.messages import Request, RequestBody
from gateway.pipeline.target import split_target


@dataclass(frozen=True, slots=True)
class Http1Settings:
    max_header_bytes: int = 8190  # one line: the request line or one field
    max_headers: int = 100
    header_read_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float | None = None  # plain listeners only (TLS: the TLS layer's)
    scheme: str = "https"

    @property
    def max_head_bytes(self) -> int:
        # The whole head, as NGINX's large_client_header_buffers bounds it.
        return self.max_header_bytes * 8


class HeadRefused(Exception):
    """The head broke the grammar (llhttp) or a limit: answer 400 and close."""

    def __init__(self, description: str, *, parser_message: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.parser_message = parser_message  # llhttp's words (forwarded.folded_certificate_hint)


class UpgradeRequested(Exception):
    """llhttp stopped after a request with ``Upgrade`` (or CONNECT); ``rest`` came after it."""

    def __init__(self, rest: bytes) -> None:
        super().__init__("upgrade")
        self.rest = rest


class _Refused(Exception):
    """Raised from a parser callback; httptools re-raises it from feed_data."""


@dataclass(frozen=True, slots=True)
class Connection:
    """What the reader puts into each Request from its connection."""

    remote: str
    transport: Transport
    pause: Callable[[], None]
    resume: Callable[[], None]


class RequestReader:
    __slots__ = (
        "_connection",
        "_fields",
        "_parser",
        "_ready",
        "_settings",
        "_url",
        "head_bytes",
        "in_head",
        "parsing",
    )

    def __init__(
        self, settings: Http1Settings, connection: Connection, ready: Callable[[Request], None]
    ) -> None:
        self._settings = settings
        self._connection = connection
        self._ready = ready  # called with each request once its head is complete
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self.in_head = True
        self.head_bytes = 0  # of the head being read
        self.parsing: Request | None = None  # the request whose body is being read

    @property
    def idle(self) -> bool:
        """Between requests: no byte of the next head has arrived."""
        return self.in_head and self.head_bytes == 0

    def feed(self, data: bytes) -> None:
        """Parse ``data``; HeadRefused or UpgradeRequested when the connection must change course.

        A malformed chunk in a body being read fails that body (MalformedBody:
        the stage reading it answers 400) and raises HeadRefused too, so the
        connection is not reused.
        """
        if self.in_head:
            room = self._settings.max_head_bytes - self.head_bytes
            if len(data) > room:
                self._feed(data[: max(room, 0)])
                if self.in_head:
                    raise HeadRefused("request head too large")
                data = data[max(room, 0) :]
            else:
                self.head_bytes += len(data)
        self._feed(data)

    def fail_body(self, exc: BaseException) -> None:
        if self.parsing is not None:
            self.parsing.content.fail(exc)

    def detach(self) -> None:
        """The connection is gone: drop the parser, which holds this reader's callbacks.

        Reader and parser (and, through the callbacks, the protocol) form a
        cycle; without it a closed connection is freed by reference counting.
        """
        self._parser = _DETACHED_PARSER
        self.parsing = None

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args and isinstance(upgrade.args[0], int) else 0
            # The request was delivered; a fresh parser takes whatever follows
            # when the answer is not a 101.
            self._parser = httptools.HttpRequestParser(self)
            self.in_head = True
            raise UpgradeRequested(data[offset:] if offset else b"") from None
        except _Refused as refused:
            raise HeadRefused(str(refused)) from None
        except httptools.HttpParserError as exc:
            if self.parsing is not None and not self.in_head:
                self.parsing.content.fail(MalformedBody(printable(str(exc))))
                self.parsing = None
                raise HeadRefused("malformed request body") from None
            if isinstance(exc.__context__, _Refused):
                raise HeadRefused(str(exc.__context__)) from None
            if data.startswith(b"PRI * HTTP/2.0"):
                # RFC 9113 §3.4's preface, sent without ALPN: say what works.
                raise HeadRefused(
                    "an HTTP/2 connection preface on an HTTP/1.1 connection: "
                    "HTTP/2 is served over TLS with ALPN h2"
                ) from None
            detail = printable(str(exc))
            field = self._failing_field(data)
            if field:
                detail = f"{detail} (in the {printable(field, 60)} field)"
            raise HeadRefused(f"malformed request: {detail}", parser_message=True) from None

    def _failing_field(self, data: bytes) -> str | None:
        """The name of the field the parser stopped in, where the head came in one piece.

        llhttp's messages name no field; naming it tells a caller which
        header to fix (and lets forwarded.folded_certificate_hint spot NGINX's
        folded certificate header).
        """
        lines = data.split(b"\n")
        index = len(self._fields) + 1  # line 0 is the request line
        if index < len(lines):
            name, colon, _ = lines[index].partition(b":")
            if colon and name.strip():
                return name.strip().decode("latin-1")
        return None

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._fields = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._settings.max_header_bytes:
            raise _Refused("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._settings.max_header_bytes:
            raise _Refused("header field too long")
        self._fields.append((name, value))
        if len(self._fields) > self._settings.max_headers:
            raise _Refused("too many header fields")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        parser = self._parser
        headers: CIMultiDict[str] = CIMultiDict(
            [
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._fields
            ]
        )
        raw = self._url.decode("utf-8", "surrogateescape")
        path, query = split_target(raw)
        version, protocol = _VERSIONS.get(parser.get_http_version()) or _version(
            parser.get_http_version()
        )
        # RFC 9112 §6.3: a request without Content-Length or Transfer-Encoding has no body.
        has_body = "Content-Length" in headers or "Transfer-Encoding" in headers
        connection = self._connection
        body = RequestBody(connection.pause, connection.resume) if has_body else _EMPTY
        request = Request(
            method=parser.get_method().decode("ascii"),
            raw_path=raw,
            path=path,
            query_string=query,
            headers=headers,
            version=version,
            remote=connection.remote,
            scheme=self._settings.scheme,
            transport=connection.transport,
            content=body,
            body_exists=has_body and headers.get("Content-Length", "1") != "0",
            protocol=protocol,
        )
        self.parsing = request if has_body else None
        self._ready(request)

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.content.feed(body)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.content.end()
            self.parsing = None
        self.in_head = True


def caller_keeps_alive(request: Request) -> bool:
    """The caller's side of persistence (RFC 9112 §9.3): its version and Connection field.

    Unread body bytes would be read as the next request (RFC 9112 §9.6), so
    after an early answer (401/403 to Expect, 408 to a trickle) it is no.
    """
    connection = request.headers.get("Connection", "").lower()
    if request.version >= (1, 1):
        persistent = "close" not in connection
    else:
        persistent = "keep-alive" in connection
    return persistent and request.content.ended


def _version(text: str) -> tuple[tuple[int, int], str]:
    major, minor = text.split(".")
    return (int(major), int(minor)), f"HTTP/{text}"


# Parsed once, not per request (llhttp accepts only these in practice).
_VERSIONS = {text: _version(text) for text in ("1.0", "1.1")}

# What a detached reader's parser is swapped for (see RequestReader.detach).
_DETACHED_PARSER = httptools.HttpRequestParser(object())

# The body of every request without one: ended, empty, never fed.
_EMPTY = RequestBody.complete(b"")
