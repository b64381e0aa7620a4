"""Writing one pipeline ``Response`` on an HTTP/2 stream: head block, DATA, trailer block."""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from gateway.http2.endpoint import H2Endpoint, StreamGone
from gateway.http2.fields import response_block, trailer_block
from gateway.pipeline.messages import Response

# Answers that never carry a body (RFC 9110 §6.4.1, §15.3.5, §15.4.5).
NO_BODY_STATUSES = frozenset({204, 304})


async def write_response(
    endpoint: H2Endpoint, stream_id: int, method: str, response: Response
) -> None:
    """Send ``response``; raises StreamGone if the stream or connection went away.

    An answer with neither body nor trailers is one HEADERS frame with
    END_STREAM (gRPC's Trailers-Only form); a streamed one ends with its
    trailer block where it has one (RFC 9113 §8.1), else an empty DATA frame.
    """
    if response.upgraded is not None or response.status < 200:
        # No Upgrade in HTTP/2 (RFC 9113 §8.6); WebSockets would need RFC 8441.
        endpoint.reset(stream_id, ErrorCodes.INTERNAL_ERROR)
        await close_chunks(response)
        return
    no_body = method == "HEAD" or response.status in NO_BODY_STATUSES
    body, chunks = response.body, response.stream
    if no_body:
        length = response.length if method == "HEAD" else None
    else:
        length = len(body) if chunks is None and body else response.length
    block = response_block(response.status, response.headers, content_length=length)
    bare = no_body or (chunks is None and not body and response.trailers is None)
    try:
        endpoint.h2.send_headers(stream_id, block, end_stream=bare)
    except ProtocolError:
        await close_chunks(response)
        raise StreamGone(stream_id) from None
    endpoint.flush_soon()
    try:
        if bare:
            return
        if chunks is None:
            if body:
                # A whole body without trailers ends the stream on its last
                # DATA frame: no empty frame after it.
                whole = response.trailers is None
                await endpoint.send_data(stream_id, body, end_stream=whole)
                response.sent_bytes += len(body)
                if whole:
                    return
        else:
            async for chunk in chunks:
                if chunk:
                    await endpoint.send_data(stream_id, chunk)
                    response.sent_bytes += len(chunk)
    finally:
        await close_chunks(response)
    trailers = trailer_block(response.trailers()) if response.trailers is not None else []
    await endpoint.end_stream(stream_id, trailers)


async def close_chunks(response: Response) -> None:
    """An answer abandoned half way releases its upstream exchange now."""
    close = getattr(response.stream, "aclose", None)
    if close is not None:
        await close()
