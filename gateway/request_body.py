"""The caller's request body: ``100 Continue`` after the policy, and relaying it in bounded time.

Both concern what a caller may make the gateway wait for once a request head
is in: a 100 invites the body, so it waits for the route's policy; the body
is streamed to the upstream one chunk at a time, and a caller trickling it
is cut off (``limits.request_body_timeout`` and ``request_body_min_rate``).
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.config import LimitsConfig
from gateway.errors import GatewayError
from gateway.pipeline.messages import MalformedBody, Request
from gateway.upstream import UpstreamConnection, UpstreamError

STREAM_CHUNK = 64 * 1024
TOO_SLOW = "request body too slow"
MALFORMED = "malformed request body"
_UNBOUNDED: contextlib.nullcontext[None] = contextlib.nullcontext()


def continue_if_expected(request: Request) -> None:
    """``100 Continue`` once routing and the policy passed (never to a caller about to get 401/403).

    RFC 9110 §10.1.1: a 100 says the request will be accepted, so the listener
    protocol sends none by itself; this stage asks for it.
    """
    if request.version < (1, 1):
        return  # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored
    if request.headers["Expect"].strip().lower() != "100-continue":
        raise GatewayError(
            417, "expectation_failed", "only the 100-continue expectation is supported"
        )
    if request.body_exists and not request.content.is_eof() and request.send_continue:
        request.send_continue()


async def send_body(
    request: Request, conn: UpstreamConnection, has_length: bool, limits: LimitsConfig
) -> str | None:
    """Stream the caller's body upstream, one chunk in flight (backpressure both ways).

    The route timeout is an idle timer while the body streams, not a total:
    counting the whole upload against it turned every upload slower than the
    timeout into a 504 although the upstream kept up, and pausing it while the
    caller is silent would let a stalled caller hold an upstream connection
    for ever.  So every chunk that moves re-arms it, and when it fires the
    side we were waiting on is the one blamed (408 caller, 504 upstream).

    A body trickled a byte per gap shorter than that timer would still hold
    the route for ever, so the caller's whole body is also bounded, as
    Apache's mod_reqtimeout does: ``limits.request_body_timeout`` seconds,
    plus one second per ``request_body_min_rate`` bytes received.  Time spent
    waiting for the upstream to take a chunk is not the caller's and is not
    counted.  Returns why the caller's body was cut (``TOO_SLOW``: the proxy
    answers 408; ``MALFORMED``: 400), else None.
    """
    content = request.content
    loop: asyncio.AbstractEventLoop | None = None
    allowed = 0.0  # loop time by which the caller must have sent the body
    if not content.is_eof():  # else the whole body came with the head: nothing to bound
        loop = asyncio.get_running_loop()
        allowed = loop.time() + limits.request_body_timeout
    try:
        async with asyncio.timeout_at(allowed) if loop else _UNBOUNDED as window:
            while True:
                conn.progress(waiting_on_caller=True)
                chunk = await content.read(STREAM_CHUNK)
                if not chunk:
                    break
                conn.progress(waiting_on_caller=False)
                if has_length:
                    conn.write(chunk)
                else:
                    conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if window is None:
                    await conn.drain()  # returns once the upstream connection took the chunk
                    continue
                assert loop is not None
                if limits.request_body_min_rate:
                    allowed += len(chunk) / limits.request_body_min_rate
                window.reschedule(None)  # the upstream's pace is not the caller's
                paused = loop.time()
                await conn.drain()
                allowed += loop.time() - paused
                window.reschedule(allowed)
        if not has_length:
            conn.write(b"0\r\n\r\n")
        # All sent: from now on only the upstream's answer is awaited.
        conn.progress(waiting_on_caller=False)
        conn.body_sent = True
    except UpstreamError:
        pass  # the connection failed: the response side reports it
    except MalformedBody:
        # A malformed chunk: the upstream got a partial body, the exchange is
        # dropped, and the caller is told (400) if no answer has started.
        conn.close()
        return MALFORMED
    except TimeoutError:
        # Too slow for limits.request_body_*: the exchange is dropped, and the
        # response side answers 408 if no answer has started.
        conn.close()
        return TOO_SLOW
    except Exception:
        # The caller's side failed (reset, malformed chunk): the upstream got
        # a partial body, so the exchange is abandoned (502, as before).
        conn.close()
    return None


def body_cut(sender: asyncio.Task[str | None] | None) -> str | None:
    """Why the caller's body was cut (TOO_SLOW, MALFORMED), once the sender ended."""
    if sender is None or not sender.done() or sender.cancelled():
        return None
    return sender.result()
