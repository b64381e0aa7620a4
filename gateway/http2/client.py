"""The upstream HTTP/2 client: routes with ``upstream_protocol: h2c`` or ``h2``.

One connection per origin carries every request to it as a stream
(``h2c``: cleartext with prior knowledge, RFC 9113 §3.3; ``h2``: TLS with
ALPN ``h2``, §3.2).  A connection that closed, received a GOAWAY or ran out
of stream ids is replaced by a new one for the next request.

An exchange streams the request body up while the answer comes back (gRPC
bidirectional streaming needs both at once): the head, then body chunks,
then trailers.  Both directions are flow controlled: DATA goes out within
the upstream's windows (``endpoint.py``), and credit for the answer is
given back only as the caller reads it, so a slow downstream holds at most
one window per stream here.

Failures raise ``gateway.upstream``'s errors, so the pipeline maps them to
502/504 in the one place it already does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Literal, cast

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from gateway.http2.endpoint import H2Endpoint, StreamGone
from gateway.http2.fields import end_to_end
from gateway.http2.stream import UpstreamAnswer
from gateway.pipeline.messages import RequestBody, Response
from gateway.upstream import UpstreamDisconnected, UpstreamTimeout, UpstreamUnreachable

UpstreamProtocol = Literal["h2c", "h2"]
# The answer's credit per stream and for the connection (RFC 9113 §6.9.2):
# what one slow downstream can make the gateway hold, per stream.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024
_LAST_STREAM_ID = 2**31 - 1


class Http2UpstreamConnection(H2Endpoint):
    """Client side of one HTTP/2 connection to an upstream."""

    def __init__(self, scheme: str, *, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(
            H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
        )
        self.scheme = scheme  # :scheme of every request ("http" for h2c)
        self.tls = tls  # the context it was made with
        self.going_away = False
        self._answers: dict[int, UpstreamAnswer] = {}
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio.Transport in all but their class.
        self.transport = cast(asyncio.Transport, transport)
        self.h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_CONCURRENT_STREAMS: 100,  # pushed streams: none
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    @property
    def usable(self) -> bool:
        return (
            not self.closed
            and not self.going_away
            and self.h2.highest_outbound_stream_id < _LAST_STREAM_ID - 2
        )

    # -- one exchange ------------------------------------------------------------------

    async def open_stream(self, block: list[tuple[bytes, bytes]], *, end: bool) -> UpstreamAnswer:
        """Send a request head (waiting for a free stream slot); the stream's answer."""
        while self.h2.open_outbound_streams >= self.h2.remote_settings.max_concurrent_streams:
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
            if not self.usable:
                raise UpstreamDisconnected("the upstream HTTP/2 connection is closing")
        if not self.usable:
            raise UpstreamDisconnected("the upstream HTTP/2 connection is closing")
        stream_id = self.h2.get_next_available_stream_id()
        answer = UpstreamAnswer(self, stream_id)
        self._answers[stream_id] = answer
        try:
            self.h2.send_headers(stream_id, block, end_stream=end)
        except ProtocolError as exc:
            self._forget(stream_id)
            raise UpstreamDisconnected(f"cannot open an HTTP/2 stream: {exc}") from None
        self.flush()
        return answer

    def give_credit(self, stream_id: int, size: int) -> None:
        """The caller read ``size`` flow-controlled bytes of an answer."""
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, stream_id)
            self.flush()

    def finished(self, stream_id: int) -> None:
        """The caller is done with a stream: reset it if either side is still open."""
        self._forget(stream_id)
        self.reset(stream_id, ErrorCodes.CANCEL)  # nothing is sent for a closed stream

    def retire(self) -> None:
        """No new streams; close once the ones in flight ended."""
        self.going_away = True
        if not self._answers:
            self.close()

    def _forget(self, stream_id: int) -> None:
        self._answers.pop(stream_id, None)
        if self.going_away and not self._answers and not self.closed:
            self.close()
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    # -- from the upstream -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            self._fail_all(UpstreamDisconnected(f"HTTP/2 protocol error from the upstream: {exc}"))
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def _dispatch(self, event: Event) -> None:
        stream_id = getattr(event, "stream_id", None) or 0
        answer = self._answers.get(stream_id)
        if isinstance(event, DataReceived):
            if answer is not None:
                answer.feed(event.data or b"", event.flow_controlled_length or 0)
            elif event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, ResponseReceived):
            if answer is not None:
                answer.head(list(event.headers or ()))
        elif isinstance(event, TrailersReceived):
            if answer is not None:
                answer.trailers_received(list(event.headers or ()))
        elif isinstance(event, StreamEnded):
            if answer is not None:
                answer.end()
                self._forget(stream_id)
        elif isinstance(event, StreamReset):
            self.wake_sender(stream_id)
            if answer is not None:
                code = ErrorCodes(event.error_code) if event.error_code is not None else 0
                answer.fail(UpstreamDisconnected(f"the upstream reset the stream ({code!s})"))
                self._forget(stream_id)
        elif isinstance(event, WindowUpdated):
            self.wake_sender(stream_id)
        elif isinstance(event, RemoteSettingsChanged):
            self.wake_sender(None)
            self._forget(0)  # a larger max_concurrent_streams frees slots
        elif isinstance(event, ConnectionTerminated):
            # No new stream goes here.  h2 takes no frame after a GOAWAY
            # (its state machine is closed), so streams in flight end too;
            # the next request opens a new connection.
            self.going_away = True
            self._fail_all(UpstreamDisconnected("the upstream sent GOAWAY"))
            if self.transport is not None:
                self.transport.close()

    def _fail_all(self, exc: Exception) -> None:
        for answer in list(self._answers.values()):
            answer.fail(exc)
        self._answers.clear()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._slot_waiters.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fail_all(UpstreamDisconnected("the upstream closed the HTTP/2 connection"))

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection()
            self.flush()
            self.transport.close()


@dataclass(frozen=True, slots=True)
class Http2Origin:
    protocol: UpstreamProtocol
    host: str
    port: int
    # "h2" only: the client context (its ALPN must be h2).  Not part of the
    # key: a new context (reloaded client material) retires the connection
    # made with the old one, which closes once its streams ended.
    tls: ssl.SSLContext | None = field(default=None, compare=False)


class Http2Client:
    """Every upstream HTTP/2 connection of one gateway: one per origin, made on demand."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, connect_timeout: float = 5.0) -> None:
        self._tls = tls  # for "h2" origins; None: the system's trust store
        self._connect_timeout = connect_timeout
        self._connections: dict[Http2Origin, Http2UpstreamConnection] = {}
        self._connecting: dict[Http2Origin, asyncio.Task[Http2UpstreamConnection]] = {}

    async def exchange(
        self,
        origin: Http2Origin,
        *,
        method: str,
        target: str,
        authority: str,
        headers: Iterable[tuple[str, str]],
        body: RequestBody | bytes | None,
        response_timeout: float,
        connect_timeout: float | None = None,
    ) -> UpstreamAnswer:
        """Send one request; return once the answer's head arrived (the body streams on)."""
        connection = await self._connection(origin, connect_timeout or self._connect_timeout)
        block = [
            (b":method", method.encode("ascii")),
            (b":scheme", connection.scheme.encode("ascii")),
            (
                b":authority",
                authority.encode("idna") if not authority.isascii() else authority.encode(),
            ),
            (b":path", target.encode("utf-8", "surrogateescape")),
            *(field for field in end_to_end(headers) if field[0] != b"host"),
        ]
        complete = body is None or isinstance(body, bytes)
        empty = body is None or body == b"" or (isinstance(body, RequestBody) and body.is_eof())
        answer = await connection.open_stream(block, end=empty)
        if not empty:
            answer.upload(_upload(connection, answer.stream_id, body, complete))
        try:
            await answer.wait_head(response_timeout)
        except BaseException:
            await answer.aclose()
            raise
        return answer

    async def _connection(self, origin: Http2Origin, seconds: float) -> Http2UpstreamConnection:
        connection = self._connections.get(origin)
        if connection is not None and connection.usable:
            if origin.tls is None or connection.tls is origin.tls:
                return connection
            connection.retire()
        task = self._connecting.get(origin)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(origin, seconds))
            self._connecting[origin] = task
            task.add_done_callback(lambda _: self._connecting.pop(origin, None))
        connection = await asyncio.shield(task)
        self._connections[origin] = connection
        return connection

    async def _connect(self, origin: Http2Origin, seconds: float) -> Http2UpstreamConnection:
        loop = asyncio.get_running_loop()
        tls = origin.protocol == "h2"
        context: ssl.SSLContext | None = None
        if tls:
            context = origin.tls
            if context is None:
                context = self._tls or ssl.create_default_context()
                context.set_alpn_protocols(["h2"])
        connection = Http2UpstreamConnection("https" if tls else "http", tls=context)
        where = f"{origin.host}:{origin.port}"
        try:
            async with asyncio.timeout(seconds):
                transport, _ = await loop.create_connection(
                    lambda: connection,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {where} took longer than {seconds} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnreachable(f"cannot connect to {where}: {exc}") from None
        if tls:
            ssl_object = transport.get_extra_info("ssl_object")
            selected = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if selected != "h2":
                transport.close()
                raise UpstreamUnreachable(f"{where} did not negotiate h2 by ALPN ({selected})")
        return connection

    async def close(self) -> None:
        for task in list(self._connecting.values()):
            task.cancel()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


async def _upload(
    connection: Http2UpstreamConnection,
    stream_id: int,
    body: RequestBody | bytes | None,
    complete: bool,
) -> None:
    """The request body, up within the upstream's windows; END_STREAM after it."""
    try:
        if isinstance(body, bytes) or body is None:
            await connection.send_data(stream_id, body or b"", end_stream=True)
            return
        while chunk := await body.read():
            await connection.send_data(stream_id, chunk)
        await connection.end_stream(stream_id)
    except StreamGone:
        pass  # the answer ended or was reset first; the answer says which


async def answer_response(
    answer: UpstreamAnswer, chunks: AsyncIterator[bytes] | None = None
) -> Response:
    """The upstream's answer as the pipeline's ``Response``, its body and trailers streamed.

    An answer that ended with its head (gRPC's Trailers-Only form: the status
    fields are in the head) stays one: no body and no trailer block, so the
    caller gets one HEADERS frame with END_STREAM again.  A gRPC client takes
    a head, an empty DATA frame and no trailers for a broken call.
    """
    length = dict(answer.headers).get("content-length")
    announced = int(length) if length is not None and length.isdigit() else None
    if answer.ended:
        await answer.aclose()
        return Response(answer.status, answer.headers, length=announced)
    return Response(
        answer.status,
        answer.headers,
        stream=chunks if chunks is not None else relay_chunks(answer),
        trailers=answer.trailers,
        length=announced,
    )


async def relay_chunks(answer: UpstreamAnswer) -> AsyncIterator[bytes]:
    """The answer's body as a ``Response.stream``; the stream is released when it ends."""
    try:
        while chunk := await answer.read():
            yield chunk
    finally:
        await answer.aclose()
