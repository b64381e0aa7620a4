"""Per-request accounting: one access-log line and the request metrics.

Handlers record what they learn on the request (``RequestFacts``); this
middleware turns it into one JSON access-log line and the counters after the
response is sent.  Never a token, a key or a full certificate: only the
client_id and the thumbprint identify the caller.

Access-log fields (docs/logging.md): ``time`` (RFC 3339 UTC), ``event``,
``listener``, ``client_id``, ``thumbprint`` (of the presented certificate,
on refusals too), ``route``, ``method``, ``path``, ``query`` (raw, values of
credential-like parameters and JWT-shaped values redacted),
``status``, ``upstream_status``, ``upstream_error``, ``latency_ms``,
``bytes`` (body bytes sent to the caller, framing and headers excluded),
``peer``, ``user_agent`` and ``request_id`` (the caller's X-Request-Id).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.deadlines import HeaderDeadlineProtocol
from gateway.logfmt import json_line, rfc3339, text_line
from gateway.metrics import Metrics, method_label


@dataclass(slots=True)
class RequestFacts:
    """What the handlers learned about one request."""

    route: str = "-"
    client_id: str | None = None
    thumbprint: str | None = None
    upstream_status: int | None = None
    oauth_outcome: str | None = None  # token endpoint: "issued" or the RFC 6749 error code
    upstream_error: str | None = None  # why a 502/504 (or a cut relay) happened
    body_bytes: int | None = None  # set by a handler that counts what it sent itself


class CountingResponse(web.StreamResponse):
    """A streamed response that counts the body bytes it was given to send.

    aiohttp's ``body_length`` counts the head too, and chunked framing: the
    access log's ``bytes`` is the body alone, as the caller's client sees it.
    """

    sent_body_bytes = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent_body_bytes += len(data)
        await super().write(data)

    async def write_eof(self, data: bytes = b"") -> None:
        self.sent_body_bytes += len(data)
        await super().write_eof(data)


FACTS_KEY = "gateway.facts"
TOKEN_PATHS = frozenset({"/connect/token", "/connect/mtls/token"})


def facts(request: web.Request) -> RequestFacts:
    found = request.get(FACTS_KEY)
    if isinstance(found, RequestFacts):
        return found
    created = RequestFacts()
    request[FACTS_KEY] = created
    return created


class AccessLog:
    """One line per request on stdout, written in batches off the request path.

    Lines are built in the handler (a json.dumps, ~3 µs) and written every
    ``FLUSH_SECONDS`` or when the buffer is large: through the logging module
    each line cost ~16 µs of the process's CPU (bench), 10 % of a proxied
    request.  A failed write (disk full, closed pipe) drops the batch and is
    counted; it never fails a request.
    """

    FLUSH_SECONDS = 0.1
    FLUSH_BYTES = 64 * 1024

    def __init__(self, *, fmt: str = "json", stream: BinaryIO | None = None) -> None:
        self.format = fmt
        self.stream: BinaryIO = stream if stream is not None else sys.stdout.buffer
        self.dropped_lines = 0
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, entry: dict[str, Any]) -> None:
        line = json_line(entry) if self.format == "json" else text_line(entry)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        try:
            self.stream.write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
            self.stream.flush()
        except (OSError, ValueError):
            self.dropped_lines += len(lines)


def create_observer(
    metrics: Metrics,
    listener: str,
    *,
    access_log: AccessLog | None,
    request_boundaries: bool = False,
) -> Middleware:
    """The accounting middleware; with ``request_boundaries``, also the header deadline's.

    With the flag it also tells the connection's HeaderDeadlineProtocol when a
    request starts and ends (first and last), so the header deadline needs no
    middleware layer of its own: one coroutine frame less per request.
    """
    in_flight = metrics.in_flight
    requests = metrics.requests
    tokens = metrics.tokens
    client_labels = metrics.client_labels
    # labels() takes a lock and builds a key on every call: keep the children.
    children: dict[tuple[str, str, int], Any] = {}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        watchdog: HeaderDeadlineProtocol | None = None
        if request_boundaries:
            transport = request.transport
            protocol = transport.get_protocol() if transport is not None else None
            if isinstance(protocol, HeaderDeadlineProtocol):
                watchdog = protocol
                watchdog.request_started()
        started = time.perf_counter()
        in_flight.inc()
        status = 500
        response: web.StreamResponse | None = None
        # Created here, so handlers find it (facts()) without a failed lookup.
        info = request[FACTS_KEY] = RequestFacts()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            response = exc  # aiohttp sends the exception itself as the answer
            raise
        finally:
            if watchdog is not None:
                watchdog.request_finished()
            in_flight.dec()
            route = info.route
            if route == "-" and request.match_info.route.resource is not None:
                route = request.match_info.route.resource.canonical
            kind = method_label(request.method)
            child = children.get((route, kind, status))
            if child is None:
                child = requests.labels(listener, route, kind, str(status))
                if len(children) < 10_000:  # routes x statuses: bounded in practice
                    children[(route, kind, status)] = child
            child.inc()
            if info.oauth_outcome is not None and route in TOKEN_PATHS:
                client = (info.client_id or "-") if client_labels else ""
                tokens.labels(client, info.oauth_outcome).inc()
            if access_log is not None:
                headers = request.headers
                access_log.write(
                    {
                        "time": rfc3339(time.time()),
                        "event": "request",
                        "listener": listener,
                        "client_id": info.client_id,
                        "thumbprint": info.thumbprint,
                        "route": route,
                        "method": request.method,
                        "path": request.path,
                        "query": _logged_query(request.raw_path.partition("?")[2]),
                        "status": status,
                        "upstream_status": info.upstream_status,
                        "upstream_error": info.upstream_error,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        "bytes": body_bytes(request, response, info),
                        "peer": request.remote,
                        "user_agent": headers.get("User-Agent"),
                        "request_id": headers.get("X-Request-Id"),
                    }
                )

    return observe


# Parameters whose values are credentials (RFC 6750 §2.3 access_token, and the
# like), and any value shaped like a JWS compact serialisation (RFC 7515 §7.1):
# their values are replaced, the rest of the query is logged as sent.
_SECRET_NAME = re.compile(r"token|secret|password|passwd|key|code|signature|sig$|auth", re.I)
_JWS_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]*(\.|%2E)[A-Za-z0-9_-]*(\.|%2E)", re.I)


def _logged_query(query: str) -> str | None:
    if not query:
        return None
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, sep, value = part.partition("=")
        if sep and (_SECRET_NAME.search(name) or _JWS_SHAPED.search(value)):
            parts[i] = f"{name}=REDACTED"
    return "&".join(parts)


def body_bytes(
    request: web.Request, response: web.StreamResponse | None, info: RequestFacts
) -> int:
    """Body bytes sent to the caller: what a handler counted, else the answer's body."""
    if info.body_bytes is not None:
        return info.body_bytes
    if response is None or request.method == "HEAD":
        return 0
    if isinstance(response, CountingResponse):
        return response.sent_body_bytes
    if isinstance(response, web.Response):
        body = response.body
        if isinstance(body, bytes | bytearray):
            return len(body)
    return 0
