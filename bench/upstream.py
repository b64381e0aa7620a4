"""A minimal asyncio HTTP/1.1 upstream for the benchmark.

Two jobs:

* ``/__echo`` (any method): answers with the raw request head it received, so
  ``compare.py`` can see exactly which identity headers a proxy forwarded,
  including duplicates and caller-sent copies that should have been stripped.
* ``/bulk`` (a request with a body): once the body has arrived, answers with
  as many bytes as it had, so ``hold.py --post-bytes`` measures what an idle
  connection keeps after moving data both ways (RESULTS.md, session 10).
* anything else: a fixed small body with ``Content-Length`` and keep-alive
  (usable as the fast upstream with ``compare.py --upstream python``; the
  default fast upstream is NGINX's ``return 200``, see bench/README.md).

It parses only what a benchmark needs (request line, ``Connection`` and
``Content-Length``); it is not a general HTTP server.

    python3 bench/upstream.py --port 18080 [--host 127.0.0.1] [--body TEXT]

With ``--tls PKI_DIR`` (a ``mtls-gateway certs init`` directory) it is a bare
uvloop + ``ssl`` mTLS server with the same protocol: the floor a Python TLS
server pays per handshake and per idle connection, without aiohttp or the
gateway (RESULTS.md compares against it).  ``--tickets N`` sets the TLS 1.3
session tickets sent per handshake (OpenSSL's default is 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl

MAX_HEAD = 64 * 1024
BULK_PIECE = memoryview(b"y" * 65536)
DEFAULT_BODY = '{"ok":true}\n'


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("_body", "_buffer", "_bulk", "_pending_body", "_transport")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._buffer = bytearray()
        self._pending_body = 0
        self._bulk: tuple[int, bytes] | None = None  # (size, connection header) once the body is in
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        transport = self._transport
        while transport is not None and not transport.is_closing():
            if self._pending_body:
                skipped = min(self._pending_body, len(self._buffer))
                del self._buffer[:skipped]
                self._pending_body -= skipped
                if self._pending_body:
                    return
            if self._bulk is not None:
                self._answer_bulk(transport, *self._bulk)
                self._bulk = None
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    transport.close()
                return
            head = bytes(self._buffer[: end + 4])
            del self._buffer[: end + 4]
            self._answer(transport, head)

    def _answer(self, transport: asyncio.Transport, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        path = parts[1] if len(parts) > 1 else b"/"
        version = parts[2] if len(parts) > 2 else b"HTTP/1.0"
        connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"connection":
                connection = value.strip().lower()
            elif key == b"content-length" and value.strip().isdigit():
                self._pending_body = int(value.strip())
        keep = b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
        body = head if path.startswith(b"/__echo") else self._body
        if not keep:
            connection_header = b"Connection: close\r\n"
        elif version != b"HTTP/1.1":  # an HTTP/1.0 client (ab -k) needs to be told
            connection_header = b"Connection: keep-alive\r\n"
        else:
            connection_header = b""
        if path.startswith(b"/bulk"):
            self._bulk = (self._pending_body, connection_header)  # answered once the body is in
            return
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), connection_header, body)
        )
        if not keep:
            transport.close()

    def _answer_bulk(self, transport: asyncio.Transport, size: int, connection: bytes) -> None:
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (size, connection)
        )
        for start in range(0, size, len(BULK_PIECE)):  # no response-sized object
            transport.write(BULK_PIECE[: size - start])
        if connection == b"Connection: close\r\n":
            transport.close()


def tls_context(pki: str, tickets: int) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(f"{pki}/server.pem", f"{pki}/server.key")
    context.load_verify_locations(f"{pki}/ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = tickets
    return context


async def serve(host: str, port: int, body: bytes, context: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(body), host, port, backlog=1024, reuse_address=True, ssl=context
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheme = "https" if context is not None else "http"
    print(f"upstream listening on {scheme}://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", default=DEFAULT_BODY, help="fixed response body")
    parser.add_argument("--tls", metavar="PKI_DIR", help="serve mTLS with this dev PKI")
    parser.add_argument("--tickets", type=int, default=2, help="TLS 1.3 tickets (with --tls)")
    args = parser.parse_args()
    context = tls_context(args.tls, args.tickets) if args.tls else None
    coro = serve(args.host, args.port, args.body.encode(), context)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(coro)


if __name__ == "__main__":
    main()
