"""The caller's request body: ``100 Continue`` after the policy, and relaying it in bounded time.

Both concern what a caller may make the gateway wait for once a request head
is in: a 100 invites the body, so it waits for the route's policy; the body
is streamed to the upstream one chunk at a time, and a caller trickling it
is cut off (``limits.request_body_timeout`` and ``request_body_min_rate``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import LimitsConfig
from gateway.errors import GatewayError
from gateway.upstream import BodyPace, UpstreamConnection, body_too_slow
from gateway.upstream import send_body as upstream_send_body

__all__ = [
    "BODY_LIMITS_KEY",
    "body_too_slow",
    "continue_if_expected",
    "defer_expectation",
    "send_body",
]

# limits.request_body_* for send_body, set on each listener app (app.py).
BODY_LIMITS_KEY: web.AppKey[LimitsConfig] = web.AppKey("request_body_limits", LimitsConfig)
_DEFAULT_LIMITS = LimitsConfig()


async def defer_expectation(request: web.Request) -> None:
    """The proxy route's expect handler: nothing is sent before the policy ran.

    aiohttp's default handler answers ``100 Continue`` before any handler,
    inviting the body of a request about to be refused with 401/403 (RFC 9110
    §10.1.1: a 100 says the request will be accepted).  The proxy sends it
    itself once routing and authentication passed (``continue_if_expected``).
    """


async def continue_if_expected(request: web.Request) -> None:
    if request.version < (1, 1):
        return  # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored
    if request.headers["Expect"].strip().lower() != "100-continue":
        raise GatewayError(
            417, "expectation_failed", "only the 100-continue expectation is supported"
        )
    if request.body_exists and not request.content.is_eof():
        # As aiohttp's own handler does; the interim answer is not the response.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


async def send_body(request: web.Request, conn: UpstreamConnection, has_length: bool) -> bool:
    """Stream the caller's body upstream (gateway/upstream/body.py has the rules).

    The caller's whole body is bounded by ``limits.request_body_timeout`` and
    ``request_body_min_rate``, unless it came whole with the head: then there
    is nothing left to wait for.  Returns True when it was cut for that.
    """
    content = request.content
    pace: BodyPace | None = None
    if not content.is_eof():
        limits = request.app.get(BODY_LIMITS_KEY, _DEFAULT_LIMITS)
        pace = BodyPace(limits.request_body_timeout, limits.request_body_min_rate)
    return await upstream_send_body(conn, content, chunked=not has_length, pace=pace)
