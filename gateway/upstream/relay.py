"""An upstream answer's body as ``Response.stream``, handing the connection back at its end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.pipeline.messages import StreamCut
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import UpstreamError


def abandon(conn: UpstreamConnection, sender: asyncio.Task[str | None] | None) -> None:
    """Drop the exchange: the connection closes and a body still being sent stops."""
    conn.close()
    if sender is not None and not sender.done():
        sender.cancel()


class ResponseStream:
    """The body chunks of ``conn``'s answer, for a listener protocol to write downstream.

    The first chunk is whatever is buffered already, b"" if nothing is: an
    empty chunk asks the protocol to send the head at once, so a slow
    stream's caller sees its answer begin.  At the end the connection goes
    back to the pool (``finish``: only if the answer was read whole and both
    sides allow reuse); closed early (``aclose``, which protocols call when
    the caller went away), it is dropped.  A request body still streaming
    when the answer ends (an early answer) is abandoned with it: the
    connection cannot be reused, and the rest of that body is not needed.

    An upstream failure mid-body is reported to ``on_cut`` and raised: the
    head is gone already, so the protocol can only cut its connection.
    """

    __slots__ = ("_conn", "_first", "_on_cut", "_sender")

    def __init__(
        self,
        conn: UpstreamConnection,
        *,
        sender: asyncio.Task[str | None] | None = None,
        on_cut: Callable[[UpstreamError], None] | None = None,
    ) -> None:
        self._conn: UpstreamConnection | None = conn
        self._sender = sender
        self._on_cut = on_cut
        self._first = True

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        if self._first:
            self._first = False
            return conn.take_body()
        try:
            chunk = await conn.read()
        except UpstreamError as exc:
            self._drop()
            if self._on_cut is not None:
                self._on_cut(exc)
            # The head is gone already: the protocol can only cut its connection.
            raise StreamCut(exc.label) from exc
        except BaseException:
            self._drop()
            raise
        if not chunk:
            self._drop()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        sender = self._sender
        if sender is not None and not sender.done():
            abandon(conn, sender)
        else:
            conn.finish()  # pooled only if the answer was read whole; else closed
