"""One upstream HTTP/2 exchange as the proxy reads it: head, body chunks, trailers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from gateway.upstream import InvalidResponse, UpstreamTimeout


class StreamOwner(Protocol):
    def give_credit(self, stream_id: int, size: int) -> None: ...

    def finished(self, stream_id: int) -> None: ...


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class UpstreamAnswer:
    """The upstream's answer on one stream, fed by the connection, read by the proxy.

    Credit for each chunk goes back to the upstream when the proxy reads it
    (RFC 9113 §6.9), so what is buffered here is bounded by the stream's window.
    """

    __slots__ = (
        "_chunks",
        "_ended",
        "_error",
        "_head",
        "_owner",
        "_trailers",
        "_upload",
        "_waiter",
        "headers",
        "status",
        "stream_id",
    )

    def __init__(self, owner: StreamOwner, stream_id: int) -> None:
        self._owner = owner
        self.stream_id = stream_id
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._trailers: list[tuple[str, str]] = []
        self._ended = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._upload: asyncio.Task[None] | None = None

    # -- the connection's side ---------------------------------------------------------

    def head(self, block: list[tuple[bytes, bytes]]) -> None:
        fields = [(_text(name), _text(value)) for name, value in block]
        status = next((value for name, value in fields if name == ":status"), "")
        if not status.isdigit():
            self.fail(
                InvalidResponse(f"the upstream answered without a valid :status ({status!r})")
            )
            return
        self.status = int(status)
        self.headers = [(name, value) for name, value in fields if not name.startswith(":")]
        if not self._head.done():
            self._head.set_result(None)

    def feed(self, data: bytes, flow_controlled: int) -> None:
        self._chunks.append((data, flow_controlled))
        self._wake()

    def trailers_received(self, block: list[tuple[bytes, bytes]]) -> None:
        self._trailers = [(_text(name), _text(value)) for name, value in block]

    def end(self) -> None:
        self._ended = True
        if not self._head.done():
            self.fail(InvalidResponse("the upstream ended the stream without an answer"))
        self._wake()

    def fail(self, exc: Exception) -> None:
        if self._ended and self._head.done():
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here: whoever waits re-raises it
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the proxy's side --------------------------------------------------------------

    def upload(self, sending: Coroutine[Any, Any, None]) -> None:
        """Run the request body's upload beside the answer (bidirectional streams)."""
        self._upload = asyncio.get_running_loop().create_task(sending)

    async def wait_head(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._head), seconds)
        except TimeoutError:
            raise UpstreamTimeout(f"no answer from the upstream within {seconds} s") from None

    @property
    def ended(self) -> bool:
        return self._ended and not self._chunks

    async def read(self) -> bytes:
        """The next body chunk; b"" once the answer ended (its trailers are then known)."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data, size = self._chunks.popleft()
        self._owner.give_credit(self.stream_id, size)
        return data

    def trailers(self) -> list[tuple[str, str]]:
        return self._trailers

    async def aclose(self) -> None:
        """Done with this exchange: stop the upload, reset the stream if still open."""
        upload = self._upload
        if upload is not None and not upload.done():
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upload
        self._owner.finished(self.stream_id)
