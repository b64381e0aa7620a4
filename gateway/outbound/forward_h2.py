"""Outbound HTTP/2: an app's h2c calls (gRPC clients, unmodified) leave as h2 over mTLS.

The plain listener takes h2c with prior knowledge (gateway/http2/prior_knowledge.py);
each stream is routed like an HTTP/1.1 request (forwarder.py) and sent over
one multiplexed h2 connection per destination, presenting the workload's
certificate, with the route's bound token.  gRPC needs HTTP/2 end to end:
the answer streams back with its trailers.

No retry here: a 401 ``invalid_token`` drops the cached token, and the app's
next call gets a fresh one (a gRPC client retries by its own policy).
"""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.errors import bad_gateway, gateway_timeout
from gateway.http2.client import Http2Client, Http2Origin, answer_response
from gateway.outbound.forwarder import RouteTarget, invalid_token_challenge, token_unavailable
from gateway.outbound.pool import OutboundPool
from gateway.outbound.routing import OutboundRoute
from gateway.outbound.tokens import TokenUnavailable
from gateway.pipeline.messages import Request, Response
from gateway.upstream import UpstreamError, UpstreamTimeout, UpstreamUnreachable, parse_origin


class Http2Outbound:
    def __init__(
        self, client: Http2Client, pool: OutboundPool, *, connect_timeout: float, timeout: float
    ) -> None:
        self._client = client
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._timeout = timeout

    async def forward(
        self,
        request: Request,
        route: OutboundRoute[RouteTarget],
        target: str,
        headers: CIMultiDict[str],
    ) -> Response:
        """``target``: the destination path and query; ``headers``: hop-by-hop fields dropped."""
        destination = parse_origin(route.config.destination)
        tokens = route.target.tokens
        material = self._pool.material()
        token: str | None = None
        if tokens is not None:
            try:
                token = await tokens.get(material)
            except TokenUnavailable as exc:
                raise token_unavailable(str(exc)) from None
            headers["Authorization"] = f"Bearer {token}"
        authority = headers.popone("Host", f"{destination.host}:{destination.port}")
        fields = list(headers.items())
        if request.headers.get("TE", "").strip().lower() == "trailers":
            fields.append(("te", "trailers"))  # gRPC's "I read trailers" (RFC 9113 §8.2.2)
        context = material.h2_context(route.target.trust)
        origin = Http2Origin("h2", destination.host, destination.port, tls=context)
        info = request.facts
        try:
            answer = await self._client.exchange(
                origin,
                method=request.method,
                target=destination.base_path + target,
                authority=authority,
                headers=fields,
                body=request.content if request.body_exists else None,
                response_timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )
        except UpstreamTimeout:
            info.upstream_error = "response timeout"
            raise gateway_timeout("the destination did not answer in time") from None
        except UpstreamUnreachable as exc:
            info.upstream_error = f"unreachable: {exc}"
            raise bad_gateway("the destination is unreachable") from None
        except UpstreamError as exc:
            info.upstream_error = f"{exc.label}: {exc}"
            raise bad_gateway(f"the destination failed: {exc.label}") from None
        info.upstream_status = answer.status
        refused = answer.status == 401 and token is not None and tokens is not None
        encoded = ((n.encode(), v.encode("utf-8", "surrogateescape")) for n, v in answer.headers)
        if refused and invalid_token_challenge(encoded):
            assert tokens is not None and token is not None
            tokens.forget(token)
        return await answer_response(answer)
