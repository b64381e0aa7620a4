"""The forward stage: one exchange with the upstream over the pooled client (gateway/upstream.py).

The route timeout bounds the wait for the response head (504), connecting
included; while the request body streams, every chunk restarts it
(gateway/request_body.py).  One TimerHandle on the upstream connection does
it: asyncio.timeout() per request cost a Timeout object, a handle and
get_running_loop() (a getpid() call in 3.11) each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from multidict import CIMultiDict
from prometheus_client import Histogram

from gateway.config import LimitsConfig, RouteConfig
from gateway.errors import GatewayError, bad_gateway, gateway_timeout
from gateway.headers import downstream_response_fields
from gateway.http1.writer import StreamCut
from gateway.metrics import Metrics
from gateway.pipeline.facts import RequestFacts
from gateway.pipeline.messages import Request, Response
from gateway.request_body import MALFORMED, TOO_SLOW, body_cut, send_body
from gateway.upstream import (
    Origin,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
)

log = logging.getLogger("gateway.proxy")

_NO_DEFAULT_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


class Forwarder:
    def __init__(
        self, upstreams: UpstreamPool, limits: LimitsConfig, metrics: Metrics | None
    ) -> None:
        self._upstreams = upstreams
        self._loop = upstreams.loop
        self._limits = limits
        self._metrics = metrics
        self._latency: dict[str, Histogram] = {}

    async def forward(
        self,
        request: Request,
        origin: Origin,
        target: str,
        headers: CIMultiDict[str],
        policy: RouteConfig,
    ) -> Response:
        info = request.facts
        if origin.authorization is not None:
            headers["Authorization"] = origin.authorization
        method = request.method
        has_body = request.body_exists
        head = request_head(method, origin.base_path + target, headers, has_body)
        deadline = self._loop.time() + policy.timeout
        sent_at = time.perf_counter()
        try:
            conn = await self._upstreams.acquire(
                origin, min(policy.connect_timeout, policy.timeout)
            )
        except UpstreamTimeout:
            info.upstream_error = "connect timeout"
            raise gateway_timeout("the upstream did not answer in time") from None
        except UpstreamUnreachable as exc:
            info.upstream_error = f"unreachable: {exc}" if str(exc) else "unreachable"
            raise bad_gateway("the upstream is unreachable") from None
        conn.start(head, head_only=method == "HEAD", timeout=policy.timeout, deadline=deadline)
        sender: asyncio.Task[str | None] | None = None
        if has_body:
            conn.body_sent = False
            sender = self._loop.create_task(
                send_body(request, conn, "Content-Length" in headers, self._limits)
            )
        try:
            await conn.response_head()
        except UpstreamTimeout as exc:
            _abandon(conn, sender)
            if exc.waiting_on_caller:
                info.upstream_error = "request body stalled"
                raise GatewayError(
                    408, "request_timeout", "the request body stopped arriving"
                ) from None
            info.upstream_error = "response timeout"
            raise gateway_timeout("the upstream did not answer in time") from None
        except UpstreamError as exc:
            _abandon(conn, sender)
            cut = body_cut(sender)
            if cut == TOO_SLOW:
                info.upstream_error = cut
                raise GatewayError(
                    408, "request_timeout", "the request body arrived too slowly"
                ) from None
            if cut == MALFORMED:
                info.upstream_error = cut
                raise GatewayError(400, "invalid_request", "malformed request body") from None
            info.upstream_error = exc.label
            raise bad_gateway(f"the upstream failed: {exc.label}") from None
        except BaseException:
            _abandon(conn, sender)
            raise
        self._observe_latency(policy.prefix, time.perf_counter() - sent_at)
        info.upstream_status = conn.status
        fields, length, transfer_encoding = downstream_response_fields(conn.headers())
        announced = int(length) if length is not None and length.isdigit() else None
        if transfer_encoding:
            announced = None
        if conn.complete and sender is None:
            # The whole answer is in (the common small response): hand the
            # connection back first, then send head and body in one write.
            body = conn.take_body()
            conn.finish()
            return Response(
                conn.status,
                fields,
                body,
                reason=conn.reason,
                length=announced if method == "HEAD" else None,
            )
        return Response(
            conn.status,
            fields,
            stream=_relay(conn, sender, info),
            length=announced,
            reason=conn.reason,
        )

    def _observe_latency(self, prefix: str, seconds: float) -> None:
        if self._metrics is None:
            return
        latency = self._latency.get(prefix)
        if latency is None:
            # labels() takes a lock and builds a key per call: keep the children.
            latency = self._latency[prefix] = self._metrics.upstream_latency.labels(prefix)
        latency.observe(seconds)


async def _relay(
    conn: UpstreamConnection, sender: asyncio.Task[str | None] | None, info: RequestFacts
) -> AsyncIterator[bytes]:
    """The upstream's body, chunk by chunk; the first may be empty (the head goes out at once)."""
    try:
        yield conn.take_body()
        while chunk := await conn.read():
            yield chunk
    except UpstreamError as exc:
        log.warning("upstream failed mid-response: %s", exc.label)
        info.upstream_error = f"mid-response: {exc.label}"
        _abandon(conn, sender)
        raise StreamCut(exc.label) from None
    except BaseException:
        # The caller went away (the writer closed this stream) or shutdown.
        _abandon(conn, sender)
        raise
    if sender is not None and not sender.done():
        # An early answer while the body still streams: the connection
        # cannot be reused, and the rest of the body is not needed.
        _abandon(conn, sender)
    else:
        conn.finish()


def request_head(method: str, target: str, headers: CIMultiDict[str], has_body: bool) -> bytes:
    """The request line and header block, as aiohttp's client sent them.

    aiohttp added ``Accept: */*`` when the caller sent none, ``Content-Length:
    0`` for a body-less request whose method implies a body, and
    ``Transfer-Encoding: chunked`` for a body of unknown length.
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
    # gateway's own escaped identity values; one count keeps that promise here.
    if head.count("\n") != len(lines) or head.count("\r") != len(lines):
        raise GatewayError(400, "invalid_request", "line break in a forwarded header")
    return head.encode("utf-8", "surrogateescape")


def _abandon(conn: UpstreamConnection, sender: asyncio.Task[str | None] | None) -> None:
    conn.close()
    if sender is not None and not sender.done():
        sender.cancel()
