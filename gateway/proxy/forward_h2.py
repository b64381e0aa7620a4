"""The forward stage for routes with ``upstream_protocol: h2c | h2`` (gateway/http2/client.py).

The same contract as ``forward.py``: the route's ``connect_timeout`` bounds
the connection (TLS included), its ``timeout`` the wait for the answer's
head (502 / 504 past them, rendered as gRPC statuses for gRPC callers), and
the answer streams back with its trailers, which gRPC needs end to end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from multidict import CIMultiDict

from gateway.errors import bad_gateway, gateway_timeout
from gateway.http2.client import Http2Client, Http2Origin, answer_response
from gateway.http2.stream import UpstreamAnswer
from gateway.pipeline.facts import RequestFacts
from gateway.pipeline.messages import Request, Response
from gateway.proxy.config import RouteConfig
from gateway.upstream import Origin, UpstreamError, UpstreamTimeout, UpstreamUnreachable

log = logging.getLogger("gateway.proxy")


class Http2Forwarder:
    def __init__(self, client: Http2Client) -> None:
        self._client = client

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
        authority = headers.popone("Host", f"{origin.host}:{origin.port}")
        fields = list(headers.items())
        # TE is hop-by-hop, but "te: trailers" is how a gRPC client says it
        # reads trailers, and gRPC servers want it (RFC 9113 §8.2.2 allows it).
        if request.headers.get("TE", "").strip().lower() == "trailers":
            fields.append(("te", "trailers"))
        assert policy.upstream_protocol != "http1"
        where = Http2Origin(policy.upstream_protocol, origin.host, origin.port)
        try:
            answer = await self._client.exchange(
                where,
                method=request.method,
                target=origin.base_path + target,
                authority=authority,
                headers=fields,
                body=request.content if request.body_exists else None,
                response_timeout=policy.timeout,
                connect_timeout=min(policy.connect_timeout, policy.timeout),
            )
        except UpstreamTimeout as exc:
            info.upstream_error = f"timeout: {exc}"
            raise gateway_timeout("the upstream did not answer in time") from None
        except UpstreamUnreachable as exc:
            info.upstream_error = f"unreachable: {exc}"
            raise bad_gateway("the upstream is unreachable") from None
        except UpstreamError as exc:
            info.upstream_error = f"{exc.label}: {exc}"
            raise bad_gateway(f"the upstream failed: {exc.label}") from None
        info.upstream_status = answer.status
        grpc_status = dict(answer.headers).get("grpc-status")  # a Trailers-Only answer
        if grpc_status is not None and grpc_status.isdigit():
            info.grpc_status = int(grpc_status)
        return await answer_response(answer, _relay(answer, info))


async def _relay(answer: UpstreamAnswer, info: RequestFacts) -> AsyncIterator[bytes]:
    """The answer's body; the gRPC status from its trailers once it ended."""
    try:
        while chunk := await answer.read():
            yield chunk
    except UpstreamError as exc:
        log.warning("upstream failed mid-response: %s", exc)
        info.upstream_error = f"mid-response: {exc.label}"
        raise
    finally:
        await answer.aclose()
    grpc_status = dict(answer.trailers()).get("grpc-status")
    if grpc_status is not None and grpc_status.isdigit():
        info.grpc_status = int(grpc_status)
