"""A relay handler for tests: what the pipeline will do for an HTTP/2 route, minus the policy.

Until the shared pipeline serves HTTP/2, this stands in for it: forward the
stream through gateway.http2.client and hand the answer back as a streamed
``Response`` with trailers; refusals are rendered as gRPC statuses for gRPC
callers, as the pipeline's error renderer does.
"""

from __future__ import annotations

from gateway.errors import GatewayError, bad_gateway, gateway_timeout
from gateway.http2.client import Http2Client, Http2Origin, answer_response
from gateway.http2.grpc import render_grpc_error, wants_grpc_answer
from gateway.pipeline.messages import Handler, Request, Response, json_response
from gateway.upstream import UpstreamError, UpstreamTimeout


def relay(client: Http2Client, origin: Http2Origin, *, response_timeout: float = 5) -> Handler:
    async def handle(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "host"]
        try:
            answer = await client.exchange(
                origin,
                method=request.method,
                target=request.raw_path,
                authority=request.host,
                headers=headers,
                body=request.content if request.body_exists else None,
                response_timeout=response_timeout,
            )
        except UpstreamError as exc:
            refusal = (
                gateway_timeout(str(exc))
                if isinstance(exc, UpstreamTimeout)
                else bad_gateway(str(exc))
            )
            return refuse(request, refusal)
        return await answer_response(answer)

    return handle


def refuse(request: Request, refusal: GatewayError) -> Response:
    if wants_grpc_answer(request.protocol, request.headers):
        return render_grpc_error(refusal)
    return json_response(refusal.status, refusal.description.encode())
