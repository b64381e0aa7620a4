"""Per-request accounting: one access-log line and the request metrics.

Handlers record what they learn on the request (``RequestFacts``); this
middleware turns it into one JSON access-log line and the counters after the
response is sent.  Never a token, a key or a full certificate: only the
client_id and the thumbprint identify the caller.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.deadlines import HeaderDeadlineProtocol
from gateway.metrics import Metrics, method_class


@dataclass(slots=True)
class RequestFacts:
    """What the handlers learned about one request."""

    route: str = "-"
    client_id: str | None = None
    thumbprint: str | None = None
    upstream_status: int | None = None
    oauth_outcome: str | None = None  # token endpoint: "issued" or the RFC 6749 error code


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
        if self.format == "json":
            line = json.dumps(entry, separators=(",", ":"), default=str)
        else:
            line = " ".join(f"{key}={value}" for key, value in entry.items() if value is not None)
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
            raise
        finally:
            if watchdog is not None:
                watchdog.request_finished()
            in_flight.dec()
            route = info.route
            if route == "-" and request.match_info.route.resource is not None:
                route = request.match_info.route.resource.canonical
            kind = method_class(request.method)
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
                access_log.write(
                    {
                        "time": round(time.time(), 3),
                        "event": "request",
                        "listener": listener,
                        "client_id": info.client_id,
                        "thumbprint": info.thumbprint,
                        "route": route,
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "upstream_status": info.upstream_status,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        "bytes": response.body_length if response is not None else 0,
                        "peer": request.remote,
                    }
                )

    return observe
