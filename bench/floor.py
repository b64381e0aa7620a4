#!/usr/bin/env python3
"""The floor of the gateway's design: its TLS layer and a proxy that does nothing else.

A reference for ``compare.py --only floor``, the question being how far the
gateway's pipeline is from the cheapest proxy built on the same parts:

* the gateway's own TLS layer (``TlsServerProtocol`` over pyOpenSSL memory
  BIOs) with the production server context (``build_server_context``:
  client certificate required and verified, ``MODE_RELEASE_BUFFERS``, ALPN);
* an HTTP/1.1 protocol on httptools that re-sends each request, head bytes
  rebuilt from the parsed fields plus one identity header, to the upstream
  over one keep-alive connection of its own, and relays the answer whole.

Left out, on purpose: routing, the registry and policy, header filtering and
framing checks, the shared upstream pool, timers, metrics and the access log.
No pipelining, no request bodies, no streaming: ``ab``'s GETs only.  So the
gap between this row and the gateway's is what the pipeline costs, and this
row against NGINX's is the most the design can reach on the machine.

    floor.py --port 8443 --pki DIR --upstream-port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import httptools
import uvloop
from cryptography import x509

from gateway.listener.handshakes import HandshakeStats
from gateway.listener.tls_context import build_server_context
from gateway.listener.tls_protocol import TlsServerProtocol


class UpstreamLeg(asyncio.Protocol):
    """One keep-alive connection to the upstream; answers go back to ``downstream``."""

    def __init__(self, downstream: asyncio.Transport) -> None:
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        # The caller's persistence for the answer in flight (ab speaks HTTP/1.0).
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.chunks)
        self.chunks.clear()
        persistence = b"keep-alive" if self.keep_alive else b"close"
        self.downstream.write(
            b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n"
            b"Connection: %s\r\n\r\n%s" % (self.status, len(body), persistence, body)
        )
        if not self.keep_alive:
            self.downstream.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream.close()


class FloorHttp(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.fields: list[bytes] = []
        self.url = b""
        self.transport: asyncio.Transport | None = None
        self.leg: UpstreamLeg | None = None
        self.connecting: asyncio.Task[Any] | None = None  # held: the loop keeps tasks weakly

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append(b"%s: %s\r\n" % (name, value))

    def on_message_complete(self) -> None:
        head = b"%s %s HTTP/1.1\r\n%sX-Client-Id: bench-client\r\n\r\n" % (
            self.parser.get_method(),
            self.url,
            b"".join(self.fields),
        )
        self.url = b""
        self.fields = []
        keep_alive = self.parser.should_keep_alive()
        leg = self.leg
        if leg is not None and leg.transport is not None:
            leg.keep_alive = keep_alive
            leg.transport.write(head)
            return
        self.connecting = asyncio.get_running_loop().create_task(self._connect(head, keep_alive))

    async def _connect(self, head: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport, leg = await loop.create_connection(
            lambda: UpstreamLeg(self.transport),  # type: ignore[arg-type]
            "127.0.0.1",
            self.upstream_port,
        )
        self.leg = leg
        leg.keep_alive = keep_alive
        transport.write(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.leg is not None and self.leg.transport is not None:
            self.leg.transport.close()
        self.leg = None


async def serve(port: int, pki: Path, upstream_port: int) -> None:
    anchor = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    context = build_server_context(
        cert=pki / "server.pem",
        key=pki / "server.key",
        anchors=[anchor],
        client_certs="required",
        min_version="1.2",
    )
    observer = HandshakeStats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: TlsServerProtocol(
            lambda: context,
            lambda: FloorHttp(upstream_port),
            handshake_timeout=10.0,
            observer=observer,
        ),
        "127.0.0.1",
        port,
        backlog=1024,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor listening on https://127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pki", type=Path, required=True, help="a dev PKI directory")
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, args.pki, args.upstream_port))


if __name__ == "__main__":
    main()
