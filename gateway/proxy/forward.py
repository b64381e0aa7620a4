"""The forward stage: one exchange with the upstream over the pooled client (gateway/upstream/).

The route timeout bounds the wait for the response head (504), connecting
included; while the request body streams, every chunk restarts it
(gateway/upstream/body.py).  One TimerHandle on the upstream connection does
it: asyncio.timeout() per request cost a Timeout object, a handle and
get_running_loop() (a getpid() call in 3.11) each time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import GatewayError, head_failure, upstream_failure
from gateway.headers import downstream_response_fields
from gateway.listener.config import LimitsConfig
from gateway.ops.metrics import Metrics
from gateway.pipeline.messages import Request, Response
from gateway.proxy.config import RouteConfig
from gateway.proxy.exchange import ProxyExchange
from gateway.upstream import (
    BodyPace,
    Origin,
    ResponseStream,
    UnsafeHeader,
    UpstreamError,
    UpstreamPool,
    abandon,
    request_line_and_fields,
    send_body,
)

log = logging.getLogger("gateway.proxy")

PEER = "upstream"


class Forwarder:
    def __init__(
        self, upstreams: UpstreamPool, limits: LimitsConfig, metrics: Metrics | None
    ) -> None:
        self._upstreams = upstreams
        self._loop = upstreams.loop
        self._pace = BodyPace(limits.request_body_timeout, limits.request_body_min_rate)
        self._metrics = metrics

    async def forward(
        self, request: Request, origin: Origin, exchange: ProxyExchange, policy: RouteConfig
    ) -> Response:
        info = request.facts
        fields = exchange.upstream_fields()
        if origin.authorization is not None:
            # Credentials in the upstream URL replace the caller's.
            fields = [f for f in fields if f[0].lower() != "authorization"]
            fields.append(("Authorization", origin.authorization))
        method = request.method
        has_body = request.body_exists
        try:
            head = request_line_and_fields(
                method,
                origin.base_path + exchange.target,
                fields,
                has_body,
                has_length=exchange.has_length,
                has_accept=exchange.has_accept,
            )
        except UnsafeHeader as unsafe:
            raise GatewayError(400, "invalid_request", str(unsafe)) from None
        deadline = self._loop.time() + policy.timeout
        sent_at = time.perf_counter()
        conn = self._upstreams.reuse(origin)
        if conn is None:
            try:
                conn = await self._upstreams.acquire(
                    origin, min(policy.connect_timeout, policy.timeout)
                )
            except UpstreamError as exc:
                refusal, info.upstream_error = upstream_failure(exc, PEER, connecting=True)
                raise refusal from None
        conn.start(head, head_only=method == "HEAD", timeout=policy.timeout, deadline=deadline)
        sender: asyncio.Task[str | None] | None = None
        if has_body:
            conn.body_sent = False
            content = request.content
            # A body that came whole with the head has nothing left to bound.
            pace = None if content.ended else self._pace
            chunked = not exchange.has_length
            sender = self._loop.create_task(send_body(conn, content, chunked=chunked, pace=pace))
        try:
            await conn.response_head()
        except UpstreamError as exc:
            raise head_failure(exc, conn, sender, info, PEER) from None
        except BaseException:
            abandon(conn, sender)
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

        def cut(exc: UpstreamError) -> None:
            log.warning("upstream failed mid-response: %s", exc.label)
            info.upstream_error = f"mid-response: {exc.label}"

        stream = ResponseStream(conn, sender=sender, on_cut=cut)
        return Response(conn.status, fields, stream=stream, length=announced, reason=conn.reason)

    def _observe_latency(self, prefix: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.upstream_latency.observe(prefix, seconds)
