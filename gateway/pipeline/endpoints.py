"""The gateway's own endpoints (discovery, JWKS, token, introspection) as one pipeline stage.

They answer on every listener before any route is looked up, so they are
never forwarded upstream, whatever the routes say.  Matched on the decoded
path exactly; each handler answers 405 itself for a method it does not take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from gateway.errors import GatewayError
from gateway.pipeline.messages import Handler, Request, Response


class Endpoints:
    __slots__ = ("_handlers",)

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)

    def dispatch(self, request: Request) -> Awaitable[Response] | None:
        """The endpoint's answer to wait for, or None: every proxied request
        passes here, so a miss costs a dict lookup and no coroutine."""
        handler = self._handlers.get(request.path)
        if handler is None:
            return None
        return self._answer(handler, request)

    @staticmethod
    async def _answer(handler: Handler, request: Request) -> Response:
        request.facts.route = request.path
        try:
            return await handler(request)
        except GatewayError as exc:
            # The token metrics count every outcome, refusals by their RFC 6749 code.
            request.facts.oauth_outcome = exc.error
            raise
