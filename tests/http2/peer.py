"""A raw HTTP/2 client for tests: h2 (the library) driven by hand over the stdlib's TLS.

Independent of gateway/http2/client.py on purpose: the server is checked
against another implementation's idea of HTTP/2, and a test can send what a
well-behaved client would not (streams past the limit, resets, huge blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes


@dataclass
class Answer:
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    reset: int | None = None  # the RST_STREAM error code, if the stream was reset
    ended: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class RawH2:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, window: int | None
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.answers: dict[int, Answer] = {}
        self.terminated: ConnectionTerminated | None = None
        self.eof = False
        self.auto_ack = True  # give credit back as DATA arrives
        self.events: list[Event] = []
        self.body_sent: dict[int, int] = {}  # DATA bytes sent so far, per stream
        self._window = window

    @classmethod
    async def connect(
        cls,
        port: int,
        context: ssl.SSLContext,
        *,
        window: int | None = None,
        alpn: tuple[str, ...] = ("h2",),
    ) -> RawH2:
        context.set_alpn_protocols(list(alpn))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        peer = cls(reader, writer, window=window)
        return peer

    @property
    def alpn(self) -> str | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.selected_alpn_protocol() if ssl_object is not None else None

    def start(self) -> None:
        """The preface and our SETTINGS (not yet written: see ``send``)."""
        self.conn.initiate_connection()
        if self._window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: self._window})

    def send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        authority: str = "localhost",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        block = [
            (":method", method),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            *(headers or []),
        ]
        self.conn.send_headers(stream_id, block, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.answers[stream_id] = Answer()
        self.send()
        return stream_id

    async def pump(self, timeout: float = 5.0) -> list[Event]:
        """Read once, feed h2, record what it meant."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.eof = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            self._record(event)
        self.events.extend(events)
        self.send()
        return events

    def _record(self, event: Event) -> None:
        stream_id = getattr(event, "stream_id", None) or 0
        answer = self.answers.setdefault(stream_id, Answer()) if stream_id else None
        if isinstance(event, ResponseReceived) and answer is not None:
            assert event.headers is not None
            answer.headers = [(str(k), str(v)) for k, v in event.headers]
            answer.status = int(answer.header(":status") or 0)
        elif isinstance(event, InformationalResponseReceived) and answer is not None:
            assert event.headers is not None
            status = next(v for k, v in event.headers if k in (":status", b":status"))
            answer.informational.append(int(status))
        elif isinstance(event, DataReceived) and answer is not None:
            answer.body += event.data or b""
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, TrailersReceived) and answer is not None:
            assert event.headers is not None
            answer.trailers = [(str(k), str(v)) for k, v in event.headers]
        elif isinstance(event, StreamEnded) and answer is not None:
            answer.ended = True
        elif isinstance(event, StreamReset) and answer is not None:
            answer.reset = int(event.error_code or 0)
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event

    async def until(self, done: object, timeout: float = 5.0) -> None:
        """Pump until ``done()`` holds (or EOF)."""
        check = done if callable(done) else (lambda: False)
        async with asyncio.timeout(timeout):
            while not check():
                if self.eof:
                    raise EOFError("the server closed the connection")
                await self.pump(timeout)

    async def answer(self, stream_id: int, timeout: float = 5.0) -> Answer:
        answer = self.answers[stream_id]
        await self.until(lambda: answer.ended or answer.reset is not None, timeout)
        return answer

    async def send_body(self, stream_id: int, data: bytes, *, end: bool = True) -> None:
        """Send ``data`` no faster than the server's windows allow."""
        offset = 0
        while offset < len(data):
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                await self.pump()  # until a WINDOW_UPDATE gives credit
                continue
            chunk = data[offset : offset + window]
            self.conn.send_data(stream_id, chunk)
            offset += len(chunk)
            self.body_sent[stream_id] = offset
            self.send()
        if end:
            self.conn.end_stream(stream_id)
            self.send()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
