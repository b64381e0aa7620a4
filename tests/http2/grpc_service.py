"""A real grpcio server for tests: an echo service on raw bytes (no protobuf needed).

Served over h2c (``add_insecure_port``) or h2 over TLS (``add_secure_port``);
it records what each call saw (metadata, the peer's address) for assertions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
from cryptography.hazmat.primitives import serialization

from tests.pki import Issued, Pki

SERVICE = "test.Echo"


@dataclass
class Seen:
    metadata: list[list[tuple[str, str | bytes]]] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.metadata.append([(m.key, m.value) for m in context.invocation_metadata()])
            self.peers.append(context.peer())


@dataclass
class GrpcUpstream:
    server: grpc.Server
    port: int
    seen: Seen

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


def _handlers(seen: Seen) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.record(context)
        if request == b"fail":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        if request.startswith(b"sleep:"):
            context.add_callback(seen.cancelled.set)
            time.sleep(float(request[6:]))
        context.set_trailing_metadata((("x-trailer", "seen"),))
        return b"echo:" + request

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        seen.record(context)
        for i in range(int(request)):
            yield b"part %d" % i

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        seen.record(context)
        for message in requests:
            yield message.upper()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )


_BIG = 16 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", _BIG), ("grpc.max_send_message_length", _BIG)]


def start_grpc_upstream(tls: tuple[bytes, bytes] | None = None) -> GrpcUpstream:
    """On 127.0.0.1, port 0; ``tls`` = (key PEM, certificate PEM) for h2 over TLS."""
    seen = Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(seen),))
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
    server.start()
    return GrpcUpstream(server, port, seen)


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message (PROTOCOL-HTTP2.md): flag 0, 4-byte length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(data: bytes) -> list[bytes]:
    messages = []
    while data:
        assert data[0] == 0, "compressed messages are not expected here"
        length = int.from_bytes(data[1:5], "big")
        messages.append(data[5 : 5 + length])
        data = data[5 + length :]
    return messages


def channel(port: int, pki: Pki, cert: Issued) -> grpc.Channel:
    """A grpcio client channel over mTLS to localhost:port, presenting ``cert``."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.pem,
        private_key=cert.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_chain=cert.pem,
    )
    return grpc.secure_channel(f"localhost:{port}", credentials, options=OPTIONS)
