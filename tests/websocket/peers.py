"""Real WebSocket peers for the relay tests, on wsproto over real loopback sockets.

``Peer`` is one wsproto frame connection over a ``StreamByteStream`` (the
test's caller, and each connection the upstream server accepts).
``WsServer`` is an upstream: it answers the handshake (or refuses it, or
stays silent), echoes messages, obeys text commands, answers pings and
records what it received and how it was closed.  ``tcp_pair`` is a connected
pair of sockets, the caller's end and the gateway's, as a listener protocol
would hand the gateway its ``ByteStream`` after a 101.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from gateway.websocket import StreamByteStream

# Seconds a test waits for something that must happen; a bound, not a measurement.
PATIENCE = 10.0

Received = str | bytes | Ping | Pong | CloseConnection | None  # None: end of stream


class Peer:
    """A wsproto connection over a stream, messages gathered whole."""

    def __init__(self, stream: StreamByteStream, connection: Connection) -> None:
        self.stream = stream
        self.connection = connection
        self._events: list[Event] = []
        self._text: list[str] = []
        self._binary: list[bytes] = []

    async def send(self, event: Event) -> None:
        self.stream.write(self.connection.send(event))
        await self.stream.drain()

    async def text(self, data: str) -> None:
        await self.send(TextMessage(data))

    async def binary(self, data: bytes) -> None:
        await self.send(BytesMessage(data))

    async def event(self) -> Event | None:
        """The next wsproto event, None at end of stream."""
        while not self._events:
            if self.connection.state is ConnectionState.CLOSED:
                return None
            try:
                data = await self.stream.read()
            except OSError:
                data = b""
            if not data:
                return None
            self.connection.receive_data(data)
            self._events.extend(self.connection.events())
        return self._events.pop(0)

    async def receive(self, timeout: float = PATIENCE) -> Received:
        """The next whole message (str or bytes), ping, pong or close; None at end of stream."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.event()
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        return text
                elif isinstance(event, BytesMessage):
                    self._binary.append(bytes(event.data))
                    if event.message_finished:
                        data, self._binary = b"".join(self._binary), []
                        return data
                else:
                    assert event is None or isinstance(event, Ping | Pong | CloseConnection)
                    return event

    async def closed_with(self, timeout: float = PATIENCE) -> tuple[int, str]:
        """The close frame received, skipping messages still in flight; answered as §5.5.1 says."""
        async with asyncio.timeout(timeout):
            while True:
                received = await self.receive()
                if isinstance(received, CloseConnection):
                    if self.connection.state is ConnectionState.REMOTE_CLOSING:
                        await self.send(received.response())
                    return int(received.code), received.reason or ""
                assert received is not None, "the connection ended without a close frame"

    async def close(self, code: int | None, reason: str = "") -> None:
        # wsproto sends a frame without a code for its own 1005 member only.
        await self.send(
            CloseConnection(CloseReason.NO_STATUS_RCVD if code is None else code, reason)
        )


@dataclass
class WsServer:
    """A wsproto WebSocket upstream on 127.0.0.1 (TLS with ``tls``).

    ``answer``: "accept", "refuse" (403 with a body), "silent" (reads anything,
    never answers), "bad-accept" (a 101 with a wrong Sec-WebSocket-Accept),
    "extension" (accepts, claiming permessage-deflate nobody offered), or
    "hang-up" (closes before answering).  Text commands once open:
    ``close CODE REASON``, ``vanish`` (TCP ends, no close frame), ``send N`` (N
    bytes binary), ``text N`` (N UTF-8 bytes of text), ``ping DATA``, ``flood
    COUNT SIZE`` (binary messages as fast as the gateway takes them).
    """

    answer: str = "accept"
    subprotocols: tuple[str, ...] = ()  # what it supports; the first offered of these is chosen
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    closes: asyncio.Queue[tuple[int, str] | None] = field(default_factory=asyncio.Queue)
    pings: list[bytes] = field(default_factory=list)
    pongs: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    flooded: int = 0  # bytes of flood messages the gateway took (their drain returned)
    buffers: int | None = None  # SO_SNDBUF/SO_RCVBUF of accepted sockets
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _streams: list[StreamByteStream] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> WsServer:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for stream in self._streams:
            stream.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def closed_with(self) -> tuple[int, str]:
        """The close frame the gateway sent on its next connection to end."""
        async with asyncio.timeout(PATIENCE):
            closed = await self.closes.get()
        assert closed is not None, "the connection ended without a close frame"
        return closed

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = StreamByteStream(reader, writer)
        if self.buffers is not None:
            accepted = stream.get_extra_info("socket")
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffers)
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffers)
        self._streams.append(stream)
        task = asyncio.create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: StreamByteStream) -> None:
        try:
            peer = await self._handshake(stream)
            if peer is not None:
                await self._session(peer)
        finally:
            stream.close()

    async def _handshake(self, stream: StreamByteStream) -> Peer | None:
        if self.answer == "silent":
            # Takes whatever comes (a request, a TLS ClientHello) and says nothing.
            while await stream.read():
                pass
            return None
        handshake = WSConnection(ConnectionType.SERVER)
        while True:
            data = await stream.read()
            if not data:
                return None
            handshake.receive_data(data)
            requests = [e for e in handshake.events() if isinstance(e, Request)]
            if requests:
                break
        request = requests[0]
        self.requests.append(request)
        if self.answer == "hang-up":
            return None
        if self.answer == "refuse":
            stream.write(handshake.send(RejectConnection(status_code=403, has_body=True)))
            stream.write(handshake.send(RejectData(b"not here")))
            return None
        if self.answer == "bad-accept":
            stream.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
            stream.write(b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IGl0\r\n\r\n")
            return None
        chosen = next((p for p in request.subprotocols if p in self.subprotocols), None)
        extra = [(b"Sec-WebSocket-Extensions", b"permessage-deflate")]
        accept = AcceptConnection(
            subprotocol=chosen, extra_headers=extra if self.answer == "extension" else []
        )
        stream.write(handshake.send(accept))
        await stream.drain()
        assert handshake.connection is not None
        return Peer(stream, handshake.connection)

    async def _session(self, peer: Peer) -> None:
        while True:
            received = await peer.receive(timeout=3600)
            if received is None:
                await self.closes.put(None)
                return
            if isinstance(received, CloseConnection):
                await self.closes.put((int(received.code), received.reason or ""))
                if peer.connection.state is ConnectionState.REMOTE_CLOSING:
                    await peer.send(received.response())
                return
            if isinstance(received, Ping):
                self.pings.append(bytes(received.payload))
                await peer.send(received.response())
            elif isinstance(received, Pong):
                await self.pongs.put(bytes(received.payload))
            elif isinstance(received, str):
                if await self._command(peer, received):
                    return
            else:
                await peer.binary(received)

    async def _command(self, peer: Peer, text: str) -> bool:
        """Run a text command (or echo the text); True once the connection is gone."""
        verb, _, args = text.partition(" ")
        if verb == "close":
            code, _, reason = args.partition(" ")
            await peer.close(int(code), reason)
        elif verb == "vanish":
            peer.stream.abort()
            return True
        elif verb == "send":
            await peer.binary(b"u" * int(args))
        elif verb == "text":
            size = int(args)
            await peer.text("é" * (size // 2) + "a" * (size % 2))
        elif verb == "ping":
            await peer.send(Ping(args.encode()))
        elif verb == "flood":
            count, size = (int(n) for n in args.split())
            for _ in range(count):
                await peer.binary(b"f" * size)
                self.flooded += size
        else:
            await peer.text(text)
        return False


async def tcp_pair(
    *, buffers: int | None = None
) -> tuple[StreamByteStream, StreamByteStream, Callable[[], None]]:
    """A connected loopback pair (caller's end, gateway's end) and a function closing both.

    ``buffers`` sets the kernel's send and receive buffer sizes of both
    sockets (SO_SNDBUF/SO_RCVBUF), so that backpressure shows early.
    """
    accepted: asyncio.Future[StreamByteStream] = asyncio.get_running_loop().create_future()

    def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(StreamByteStream(reader, writer))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    if buffers is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    gateway_end = await accepted
    server.close()
    if buffers is not None:
        accepted_socket = gateway_end.get_extra_info("socket")
        accepted_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        accepted_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
    caller_end = StreamByteStream(reader, writer)

    def close() -> None:
        caller_end.close()
        gateway_end.close()

    return caller_end, gateway_end, close


def free_port() -> int:
    """A loopback port nothing listens on (as tests/conftest.py finds one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
