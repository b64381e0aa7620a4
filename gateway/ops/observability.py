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
from typing import Any, BinaryIO

from gateway.ops.logfmt import json_line, rfc3339, text_line
from gateway.ops.metrics import Metrics, method_label
from gateway.pipeline.facts import RequestFacts
from gateway.pipeline.messages import Request, Response

TOKEN_PATHS = frozenset({"/connect/token", "/connect/mtls/token"})


def facts(request: Request) -> RequestFacts:
    return request.facts


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


class Observer:
    """The pipeline's last stage: the request metrics and one access-log line per answer.

    Called by the listener protocol once the answer went out (or the
    connection broke under it), so ``latency_ms`` and ``bytes`` are what the
    caller got.
    """

    __slots__ = (
        "_access_log",
        "_client_labels",
        "_counts",
        "_http2",
        "_http2_children",
        "_listener",
        "_published",
        "_requests",
        "_tokens",
        "in_flight",
    )

    def __init__(self, metrics: Metrics, listener: str, *, access_log: AccessLog | None) -> None:
        self._listener = listener
        self._access_log = access_log
        self._requests = metrics.requests
        self._tokens = metrics.tokens
        self._client_labels = metrics.client_labels
        self._http2 = metrics.http2_requests
        self._http2_children: dict[tuple[str, int | None], Any] = {}
        # The request path only adds to plain integers: a prometheus-client
        # inc() takes a lock, and three per request (in flight up and down,
        # the request counter) cost more than the routing stage.  They are
        # copied into the metrics before each scrape (Metrics.sync), and each
        # second in workers.
        self.in_flight = 0
        self._counts: dict[tuple[str, str, int], int] = {}
        self._published: dict[tuple[str, str, int], int] = {}
        metrics.syncs.append(self.sync)
        metrics.in_flight_sources.append(self._in_flight_now)

    def _in_flight_now(self) -> int:
        return self.in_flight

    def sync(self) -> None:
        """Copy the request counts into ``mtls_gateway_requests_total``."""
        published = self._published
        for key, count in list(self._counts.items()):
            delta = count - published.get(key, 0)
            if delta:
                route, kind, status = key
                self._requests.labels(self._listener, route, kind, str(status)).inc(delta)
                published[key] = count

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, request: Request, response: Response, started: float) -> None:
        self.in_flight -= 1
        info = request.facts
        route = info.route
        status = response.status
        key = (route, method_label(request.method), status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if request.protocol == "HTTP/2":
            self._count_http2(route, info.grpc_status)
        if info.oauth_outcome is not None and route in TOKEN_PATHS:
            client = (info.client_id or "-") if self._client_labels else ""
            self._tokens.labels(client, info.oauth_outcome).inc()
        if self._access_log is None:
            return
        headers = request.headers
        self._access_log.write(
            {
                "time": rfc3339(time.time()),
                "event": "request",
                "listener": self._listener,
                "client_id": info.client_id,
                "thumbprint": info.thumbprint,
                "route": route,
                "method": request.method,
                "path": request.path,
                "query": _logged_query(request.query_string),
                "status": status,
                "upstream_status": info.upstream_status,
                "upstream_error": info.upstream_error,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "bytes": _body_bytes(request, response, info),
                "peer": request.remote,
                "user_agent": headers.get("User-Agent"),
                "request_id": headers.get("X-Request-Id"),
                **({"protocol": request.protocol} if request.protocol == "HTTP/2" else {}),
                **({"grpc_status": info.grpc_status} if info.grpc_status is not None else {}),
            }
        )

    def _count_http2(self, route: str, grpc_status: int | None) -> None:
        child = self._http2_children.get((route, grpc_status))
        if child is None:
            label = "" if grpc_status is None else str(grpc_status)
            child = self._http2.labels(self._listener, route, label)
            if len(self._http2_children) < 10_000:
                self._http2_children[(route, grpc_status)] = child
        child.inc()


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


def _body_bytes(request: Request, response: Response, info: RequestFacts) -> int:
    """Body bytes sent to the caller: what a stage counted, else what the protocol wrote."""
    if info.body_bytes is not None:
        return info.body_bytes
    if request.method == "HEAD":
        return 0
    return response.sent_bytes
