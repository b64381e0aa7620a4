"""The downstream HTTP/2 protocol: each stream a ``Request`` through the pipeline's ``Handler``.

It sits where the HTTP/1.1 protocol does, over the TLS layer's transport,
once ALPN chose ``h2`` (``gateway/listener/stack.py``).  h2 parses and
validates frames and header blocks (RFC 9113 §8.2: lowercase names, no
connection-specific fields, pseudo-fields well formed); this module runs one
task per stream, feeds the request body to it with flow control, and writes
the ``Response`` back as a header block, DATA within the peer's windows, and
a trailer block.

Limits (``limits.py``): concurrent streams and the header list size are
advertised in SETTINGS; h2 enforces the first, this module answers a block
over the second 431; the rapid-reset pattern (CVE-2023-44487) is counted
here.  ``drain()`` (shutdown) sends GOAWAY and
closes once the streams it admitted have ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from gateway.errors import json_error
from gateway.http1.connections import ConnectionSet
from gateway.http1.server import Gate, Observing
from gateway.http2.endpoint import H2Endpoint, StreamGone
from gateway.http2.fields import header_list_size, request_head
from gateway.http2.inbound import InboundStream
from gateway.http2.limits import Http2Limits, ResetCounter, start_server_connection
from gateway.http2.respond import write_response
from gateway.ops.throttle import ThrottledWarning
from gateway.pipeline.messages import Handler, Request, RequestBody, Response
from gateway.timer import LazyTimer

log = logging.getLogger("gateway")
_calm_warnings = ThrottledWarning(log)

# RFC 6585 §5, in the gateway's one JSON error shape (gateway/errors.py).
_HEADER_TOO_LARGE = json_error(431, "invalid_request", "request header fields too large")


class Http2ServerProtocol(H2Endpoint):
    """Server side of one HTTP/2 connection (RFC 9113), created after the TLS handshake."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Http2Limits | None = None,
        scheme: str = "https",
        observer: Observing | None = None,
        connections: ConnectionSet | None = None,
        draining: Callable[[], bool] | None = None,
        admit: Gate | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=True,
                # Every block this side sends is built by fields.response_block
                # or trailer_block, which already apply RFC 9113 §8.2 (lowercase
                # names, no connection-specific field, no CR/LF/NUL, :status
                # first): h2's second pass over each field cost more per stream
                # than the whole routing stage (bench/RESULTS.md).
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self._handler = handler
        self._limits = limits or Http2Limits()
        self._scheme = scheme
        self._observer = observer
        self._connections = connections
        self._shutting_down = draining
        self._admit = admit
        self._release = release
        self._streams: dict[int, InboundStream] = {}
        self._loop = asyncio.get_running_loop()
        self._remote = ""
        self._draining = False
        self._last_stream_id = 2**31 - 1  # until a GOAWAY names the last one processed
        self._resets = ResetCounter(self._limits.max_resets, self._limits.reset_window)
        # The idle deadline moves on every stream: a float store (gateway/timer.py).
        self._idle_timer = LazyTimer(self._loop)
        self._done: asyncio.Future[None] = self._loop.create_future()

    # -- from the transport ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio.Transport in all but their class.
        self.transport = cast(asyncio.Transport, transport)
        if self._admit is not None and not self._admit():
            self._refuse_connection()
            return
        if self._connections is not None:
            self._connections.add(self)
        peer = self.transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        start_server_connection(self.h2, self._limits)
        self.flush()
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            # h2 queued the GOAWAY that names the error (RFC 9113 §5.4.1).
            log.info("http2 connection error from %s: %s", self._remote, exc)
            self._terminate()
            return
        for event in events:
            self._dispatch(event)
            if self.closed:
                return
        self.flush()

    def eof_received(self) -> bool | None:
        return False  # the peer sends nothing more: no stream can complete its request

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._release is not None:
            self._release()
            self._release = None
        if self._connections is not None:
            self._connections.discard(self)
        self._idle_timer.stop()
        gone = ConnectionError("the HTTP/2 connection closed")
        for stream in list(self._streams.values()):
            if stream.body is not None:
                stream.body.fail(gone)
            if stream.task is not None:
                stream.task.cancel()
        self._streams.clear()
        if not self._done.done():
            self._done.set_result(None)

    # -- events ------------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._data(event)
        elif isinstance(event, RequestReceived):
            self._request(event)
        elif isinstance(event, StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream.remote_open = False
                if stream.body is not None:
                    stream.body.end()
        elif isinstance(event, WindowUpdated):
            self.wake_sender(event.stream_id)
        elif isinstance(event, StreamReset):
            self._stream_reset(event)
        elif isinstance(event, RemoteSettingsChanged):
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self.wake_sender(None)
        elif isinstance(event, ConnectionTerminated):
            # The peer's GOAWAY.  h2 accepts no frame after one (its state
            # machine is closed), so streams still running cannot be answered.
            self._terminate()
        # Trailers on a request, PRIORITY and PING are h2's business (or ignored).

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id or 0
        if self._draining and stream_id > self._last_stream_id:
            # Past the GOAWAY's last stream id: not processed, safe to retry
            # on a new connection (RFC 9113 §6.8).
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self._streams) >= self._limits.max_concurrent_streams:
            # Not processed, so safe to retry (RFC 9113 §8.7); counted with the
            # caller's own resets: refusals on demand are as cheap a flood.
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
            self._count_reset()
            return
        block = list(event.headers or ())
        ended = event.stream_ended is not None
        stream = InboundStream(stream_id, remote_open=not ended)
        self._streams[stream_id] = stream
        self._idle_timer.disarm()
        if header_list_size(block) > self._limits.max_header_list_size:
            # RFC 9113 §10.5.1; h2's decoder ends the connection only past
            # its hard limit (limits.HARD_HEADER_LIST_SIZE).
            stream.task = self._loop.create_task(self._respond_only(stream, _HEADER_TOO_LARGE))
            return
        body = RequestBody(pause=stream.pause, resume=lambda: self._resume_body(stream))
        stream.body = body
        if ended:
            body.end()
        request = request_head(block).request(
            body,
            ended=ended,
            remote=self._remote,
            scheme=self._scheme,
            transport=self.transport,
            send_continue=lambda: self._send_continue(stream_id),
        )
        stream.task = self._loop.create_task(self._serve(stream, request))

    def _data(self, event: DataReceived) -> None:
        stream_id = event.stream_id or 0
        size = event.flow_controlled_length or 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.body is None:
            # Nobody reads it: hand the connection's credit back at once.
            if size:
                self.h2.acknowledge_received_data(size, stream_id)
            return
        credit = stream.feed(event.data or b"", size)
        if credit:
            self.h2.acknowledge_received_data(credit, stream_id)

    def _stream_reset(self, event: StreamReset) -> None:
        stream_id = event.stream_id or 0
        self.wake_sender(stream_id)
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            if stream.body is not None:
                stream.body.fail(ConnectionResetError("the caller reset the stream"))
            if stream.task is not None:
                stream.task.cancel()
            self._stream_finished()
        if event.remote_reset:
            self._count_reset()

    def _count_reset(self) -> None:
        """CVE-2023-44487: a stream opened and reset costs the caller nothing."""
        if self._resets.count(self._loop.time()):
            _calm_warnings.warning(
                "http2 rapid reset (CVE-2023-44487): too many RST_STREAM; connection closed",
                event="http2_rapid_reset",
                peer=self._remote,
                max_resets=self._limits.max_resets,
                seconds=self._limits.reset_window,
            )
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            self._terminate()

    # -- one stream --------------------------------------------------------------------

    async def _serve(self, stream: InboundStream, request: Request) -> None:
        started = time.perf_counter()
        observer = self._observer
        if observer is not None:
            observer.begin()
        response: Response | None = None
        try:
            response = await self._handler(request)
            await write_response(self, stream.id, request.method, response)
        except StreamGone:
            response = Response(499) if response is None else response
        except asyncio.CancelledError:
            response = Response(499) if response is None else response  # the caller reset it
            raise
        except Exception:
            # Before the head: nothing was answered; after it: the body broke
            # off (the upstream failed mid-answer).  Either way only a reset
            # tells the caller this stream's answer is not complete.
            log.exception("http2: answering %s %s failed", request.method, request.path)
            self.reset(stream.id, ErrorCodes.INTERNAL_ERROR)
        finally:
            if observer is not None:
                observer.end(request, response or Response(500), started)
            self._close_stream(stream)

    async def _respond_only(self, stream: InboundStream, response: Response) -> None:
        try:
            await write_response(self, stream.id, "GET", response)
        except StreamGone:
            pass
        finally:
            self._close_stream(stream)

    def _close_stream(self, stream: InboundStream) -> None:
        if self._streams.get(stream.id) is not stream:
            return  # already reset and forgotten
        del self._streams[stream.id]
        if not self.closed:
            if credit := stream.take_credit():
                self.h2.acknowledge_received_data(credit, stream.id)
            if stream.remote_open:
                # The answer is complete and the body is no longer wanted:
                # RFC 9113 §8.1 lets the server stop it without an error.
                self.reset(stream.id, ErrorCodes.NO_ERROR)
            self.flush()
        self._stream_finished()

    def _stream_finished(self) -> None:
        if self.closed:
            return
        if not self._draining and self._shutting_down is not None and self._shutting_down():
            self.drain()  # a connection accepted while the gateway drains
            return
        if self._streams:
            return
        if self._draining:
            self._goodbye()
        else:
            self._arm_idle_timer()

    # -- flow control on the request body ---------------------------------------------

    def _resume_body(self, stream: InboundStream) -> None:
        credit = stream.take_credit()
        if credit and not self.closed and self._streams.get(stream.id) is stream:
            self.h2.acknowledge_received_data(credit, stream.id)
            self.flush()

    def _send_continue(self, stream_id: int) -> None:
        if stream_id in self._streams and not self.closed:
            try:
                self.h2.send_headers(stream_id, [(b":status", b"100")])
            except ProtocolError:
                return
            self.flush()

    # -- closing -----------------------------------------------------------------------

    def drain(self) -> None:
        """Shutdown: GOAWAY now; close once the streams admitted so far have ended.

        h2's ``close_connection`` closes its state machine (no frame for an
        open stream could follow), so the first GOAWAY is one frame of our
        own; h2's final one is sent when the last stream ended.
        """
        if self._draining or self.closed:
            return
        self._draining = True
        self._last_stream_id = self.h2.highest_inbound_stream_id
        self.flush()
        goaway = GoAwayFrame(0, last_stream_id=self._last_stream_id, error_code=ErrorCodes.NO_ERROR)
        if self.transport is not None:
            self.transport.write(goaway.serialize())
        if not self._streams:
            self._goodbye()

    close_when_idle = drain  # the name the HTTP/1.1 connection set uses

    @property
    def busy(self) -> bool:
        return bool(self._streams)

    def cut(self) -> None:
        """The shutdown grace is over: end the connection, whatever is in flight."""
        if self.transport is not None:
            self.transport.abort()

    async def finished(self) -> None:
        await asyncio.shield(self._done)

    def _refuse_connection(self) -> None:
        """Past limits.max_connections: SETTINGS, then GOAWAY before any stream, and close.

        RFC 9113 §6.8: a GOAWAY naming stream 0 says no stream was processed,
        so the caller may retry every request elsewhere.
        """
        self._release = None  # not admitted: nothing to release
        self.h2.initiate_connection()
        self.h2.close_connection(
            ErrorCodes.NO_ERROR, additional_data=b"too many open connections", last_stream_id=0
        )
        self._terminate()

    def _goodbye(self) -> None:
        if not self.closed:
            self.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=self._last_stream_id)
            self._terminate()

    def _terminate(self) -> None:
        """Write what h2 queued (a GOAWAY) and close; running streams are cancelled."""
        self.flush()
        self._idle_timer.stop()
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _arm_idle_timer(self) -> None:
        self._idle_timer.start(self._loop.time() + self._limits.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self._streams:
            self.drain()
