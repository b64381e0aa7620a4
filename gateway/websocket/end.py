"""One end of a relayed WebSocket: wsproto's frame layer over a byte stream (RFC 6455 §5).

The gateway is a WebSocket endpoint on both of its connections: the server
on the caller's, the client on the upstream's.  Each is a
``wsproto.connection.Connection`` (frames, masking, UTF-8 checks, the close
state machine) fed from and written to a ``ByteStream``; nothing here knows
which side it is, beyond what wsproto does with its connection type.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Event
from wsproto.frame_protocol import CloseReason

from gateway.pipeline.messages import ByteStream

# Seconds each side gets to take a close frame and answer it before the
# relay stops waiting (its connection is then closed without the answer).
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Closing:
    """A close frame to send: code and reason.

    1005 ("no status", §7.4.1) is never sent as a code: it stands for a close
    frame without one, and is relayed as such.  wsproto cuts a reason to the
    123 bytes a control frame leaves it (§5.5) at a character boundary.
    """

    code: int
    reason: str = ""


class WebSocketEnd:
    """A wsproto ``Connection`` over a ``ByteStream``: events in, events out, the close handshake."""

    def __init__(self, stream: ByteStream, connection: Connection) -> None:
        self.stream = stream
        self.connection = connection
        self._events: deque[Event] = deque()
        self._ended = False  # the stream ended or broke: nothing more to read or write
        self._failed = False  # the peer broke the protocol: no close answer to wait for

    def queue(self, events: Iterable[Event]) -> None:
        """Events already parsed (those that came in with the handshake answer)."""
        self._events.extend(events)

    @property
    def state(self) -> ConnectionState:
        return self.connection.state

    @property
    def ended(self) -> bool:
        return self._ended

    async def next_event(self) -> Event | None:
        """The peer's next event; None once its connection ended (or broke) without more.

        A ``CloseConnection`` is either the peer's close frame or, while the
        state stays ``OPEN``, wsproto refusing what the peer sent (a bad frame,
        invalid UTF-8 in text: its ``code`` is 1002 or 1007): see ``refused``.
        """
        while not self._events:
            if self._ended or self.connection.state is ConnectionState.CLOSED:
                return None
            try:
                data = await self.stream.read()
            except OSError:
                data = b""
            if not data:
                self._ended = True
                return None
            self.connection.receive_data(data)
            self._events.extend(self.connection.events())
        return self._events.popleft()

    def refused(self, event: CloseConnection) -> bool:
        """Is ``event`` wsproto failing the connection (§7.1.7), rather than the peer's close frame?

        wsproto moves to REMOTE_CLOSING (or CLOSED) on a close frame it
        received, and leaves the state as it was when it refuses a frame.
        """
        failed = self.connection.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING)
        if failed:
            self._failed = True
        return failed

    async def send(self, event: Event) -> None:
        """Send ``event`` and wait for the stream to take it (backpressure); OSError if it is gone.

        Nothing but a close may follow a close frame (§5.5.1): once this end is
        closing, data and control frames are dropped.
        """
        if self.connection.state is not ConnectionState.OPEN or self._ended:
            return
        self.stream.write(self.connection.send(event))
        await self.stream.drain()

    def send_close_now(self, closing: Closing) -> bool:
        """Write a close frame without waiting (cancellation paths); False if none can be sent."""
        if self._ended or self.connection.state not in (
            ConnectionState.OPEN,
            ConnectionState.REMOTE_CLOSING,
        ):
            return False
        if closing.code == CloseReason.NO_STATUS_RCVD:
            # wsproto sends a frame without a code for its own enum member
            # only; the int 1005 it would turn into 1000.
            frame = CloseConnection(CloseReason.NO_STATUS_RCVD, None)
        else:
            frame = CloseConnection(closing.code, closing.reason)
        try:
            self.stream.write(self.connection.send(frame))
        except OSError:
            self._ended = True
            return False
        return True

    async def close(self, closing: Closing, within: float = CLOSE_TIMEOUT) -> None:
        """This end's half of the closing handshake (§7.1.2), then the peer's, at most ``within`` s.

        A peer that sent its close frame already gets the answer only; one that
        did not gets ``closing`` and is waited for until its own close frame
        (data still arriving is discarded), its end of stream, or ``within``.
        """
        awaiting_answer = self.connection.state is ConnectionState.OPEN and not self._failed
        if not self.send_close_now(closing):
            return
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(within):
                await self.stream.drain()
                while awaiting_answer:
                    event = await self.next_event()
                    if event is None or isinstance(event, CloseConnection):
                        break
