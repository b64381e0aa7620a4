"""A request body streamed to the upstream, one chunk in flight, in bounded time."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

from gateway.pipeline.malformed import MalformedBody
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import UpstreamError

STREAM_CHUNK = 64 * 1024
TOO_SLOW = "request body too slow"
MALFORMED = "malformed request body"
_UNBOUNDED: contextlib.nullcontext[None] = contextlib.nullcontext()


class BodySource(Protocol):
    """Where the body comes from: the caller's (``RequestBody``, aiohttp's StreamReader)."""

    async def read(self, n: int = -1, /) -> bytes:
        """At most ``n`` bytes; b"" once the body ended."""
        ...


@dataclass(frozen=True, slots=True)
class BodyPace:
    """How long a caller may take for its body: ``timeout`` s, plus 1 s per ``min_rate`` bytes."""

    timeout: float
    min_rate: float  # bytes per second; 0: no allowance per byte


async def send_body(
    conn: UpstreamConnection, source: BodySource, *, chunked: bool, pace: BodyPace | None = None
) -> str | None:
    """Stream ``source`` upstream, one chunk in flight (backpressure both ways).

    The exchange's timeout is an idle timer while the body streams, not a
    total: counting the whole upload against it turned every upload slower
    than the timeout into a 504 although the upstream kept up, and pausing it
    while the caller is silent would let a stalled caller hold an upstream
    connection for ever.  So every chunk that moves re-arms it
    (``conn.progress``), and when it fires the side we were waiting on is the
    one blamed (``UpstreamTimeout.waiting_on_caller``: 408 caller, 504
    upstream).

    A body trickled a byte per gap shorter than that timer would still hold
    the connection for ever, so with ``pace`` the caller's whole body is also
    bounded, as Apache's mod_reqtimeout does.  Time spent waiting for the
    upstream to take a chunk is not the caller's and is not counted.  Returns
    why the caller's body was cut: ``TOO_SLOW`` (the caller gets 408) or
    ``MALFORMED`` (a broken chunk: 400); None otherwise.
    """
    loop: asyncio.AbstractEventLoop | None = None
    allowed = 0.0  # loop time by which the caller must have sent the body
    if pace is not None:
        loop = asyncio.get_running_loop()
        allowed = loop.time() + pace.timeout
    try:
        async with asyncio.timeout_at(allowed) if loop else _UNBOUNDED as window:
            while True:
                conn.progress(waiting_on_caller=True)
                chunk = await source.read(STREAM_CHUNK)
                if not chunk:
                    break
                conn.progress(waiting_on_caller=False)
                # RFC 9112 §7.1: chunk-size in hex, CRLF, data, CRLF.
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if window is None:
                    await conn.drain()  # returns once the upstream connection took the chunk
                    continue
                assert pace is not None and loop is not None
                if pace.min_rate:
                    allowed += len(chunk) / pace.min_rate
                window.reschedule(None)  # the upstream's pace is not the caller's
                paused = loop.time()
                await conn.drain()
                allowed += loop.time() - paused
                window.reschedule(allowed)
        if chunked:
            conn.write(b"0\r\n\r\n")
        # All sent: from now on only the upstream's answer is awaited.
        conn.progress(waiting_on_caller=False)
        conn.body_sent = True
    except UpstreamError:
        pass  # the connection failed: the response side reports it
    except MalformedBody:
        # The upstream got a partial body: the exchange is dropped, and the
        # caller is told (400) if no answer has started.
        conn.close()
        return MALFORMED
    except TimeoutError:
        # Too slow for the pace: the exchange is dropped, and the response
        # side answers 408 if no answer has started.
        conn.close()
        return TOO_SLOW
    except Exception:
        # The caller's side failed (reset, malformed chunk): the upstream got
        # a partial body, so the exchange is abandoned (502).
        conn.close()
    return None


def body_cut(sender: asyncio.Task[str | None] | None) -> str | None:
    """Why the sender task cut the caller's body (TOO_SLOW, MALFORMED), once it ended."""
    if sender is None or not sender.done() or sender.cancelled():
        return None
    return sender.result()
