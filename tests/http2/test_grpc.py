"""gateway.http2.grpc: refusals as gRPC statuses, read back by a real grpcio client."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import pytest
from multidict import CIMultiDict

from gateway.errors import GatewayError, access_denied, client_certificate_required
from gateway.http2.grpc import (
    GrpcStatus,
    encode_grpc_message,
    grpc_status_for,
    is_grpc,
    render_grpc_error,
    wants_grpc_answer,
)
from gateway.pipeline.messages import Request, Response
from tests.http2.conftest import StartH2
from tests.http2.grpc_service import SERVICE, channel
from tests.pki import Issued, Pki


@pytest.mark.parametrize(
    ("http_status", "grpc_status"),
    [
        (400, GrpcStatus.INTERNAL),  # gRPC's mapping doc
        (401, GrpcStatus.UNAUTHENTICATED),
        (403, GrpcStatus.PERMISSION_DENIED),
        (404, GrpcStatus.UNIMPLEMENTED),
        (408, GrpcStatus.DEADLINE_EXCEEDED),
        (429, GrpcStatus.UNAVAILABLE),
        (501, GrpcStatus.UNIMPLEMENTED),
        (502, GrpcStatus.UNAVAILABLE),
        (503, GrpcStatus.UNAVAILABLE),
        (504, GrpcStatus.DEADLINE_EXCEEDED),  # issue 17; the doc says UNAVAILABLE
        (417, GrpcStatus.UNKNOWN),
        (500, GrpcStatus.UNKNOWN),
    ],
)
def test_http_status_to_grpc_status(http_status: int, grpc_status: GrpcStatus) -> None:
    assert grpc_status_for(http_status) == grpc_status


def test_grpc_message_is_percent_encoded_as_the_spec_says() -> None:
    assert encode_grpc_message("plain text, (ok)!") == "plain text, (ok)!"
    assert encode_grpc_message("100% sure") == "100%25 sure"
    assert encode_grpc_message("café\n") == "caf%C3%A9%0A"
    assert unquote(encode_grpc_message("ünïcode % \t")) == "ünïcode % \t"


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("Application/GRPC+json; charset=utf-8", True),
        ("application/grpc-web", False),  # gRPC-Web is another protocol
        ("application/json", False),
        (None, False),
    ],
)
def test_which_requests_are_grpc(content_type: str | None, grpc: bool) -> None:
    assert is_grpc(content_type) is grpc
    headers = CIMultiDict({"Content-Type": content_type} if content_type else {})
    assert wants_grpc_answer("HTTP/2", headers) is grpc
    assert wants_grpc_answer("HTTP/1.1", headers) is False


def test_the_answer_is_trailers_only() -> None:
    response = render_grpc_error(access_denied())
    assert response.status == 200
    assert response.body == b"" and response.stream is None and response.trailers is None
    assert dict(response.headers) == {
        "content-type": "application/grpc",
        "grpc-status": "7",
        "grpc-message": "access_denied: the client certificate is not registered or not enabled",
    }


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (client_certificate_required(), grpc.StatusCode.UNAUTHENTICATED),
        (access_denied(), grpc.StatusCode.PERMISSION_DENIED),
        (
            GatewayError(503, "temporarily_unavailable", "registry down"),
            grpc.StatusCode.UNAVAILABLE,
        ),
        (GatewayError(504, "gateway_timeout", "slow: 100% é"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_a_grpcio_client_reads_the_status_and_message(
    h2_listener: StartH2, pki: Pki, client_cert: Issued, refusal: GatewayError, code: object
) -> None:
    async def refuse(request: Request) -> Response:
        await request.read()
        return render_grpc_error(refusal)

    listener = await h2_listener(refuse)

    def call() -> grpc.RpcError:
        with channel(listener.port, pki, client_cert) as ch, pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
        return caught.value

    error = await asyncio.to_thread(call)
    assert error.code() == code
    assert error.details() == f"{refusal.error}: {refusal.description}"
