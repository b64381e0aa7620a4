"""A listener's pipeline: named stages run in order until one answers.

Built once per listener and logged at start, e.g.

    framing → endpoints → route → authenticate → authorize → continue → identity headers → forward

Each stage takes the ``Request`` and returns None (go on) or the
``Response``; a stage may also raise ``GatewayError``, which is rendered in
one place (``render_error``): JSON for HTTP callers, gRPC status for gRPC
ones.  The observer (metrics, access log) runs after the answer went out,
in the listener protocol.  Synchronous stages are called without an await:
a coroutine frame per stage per request is measurable at this scale.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.http2.grpc import grpc_status_for, render_grpc_error, wants_grpc_answer
from gateway.pipeline.messages import Request, Response

SyncStage = Callable[[Request], Response | None]
AsyncStage = Callable[[Request], Awaitable[Response | None]]
ErrorRenderer = Callable[[Request, GatewayError], Response]


def render_error(request: Request, error: GatewayError) -> Response:
    """The one rendering of a refusal: ``{"error", "error_description"}`` (RFC 6749 §5.2 shape).

    A gRPC caller (HTTP/2, ``application/grpc``) reads ``grpc-status`` instead:
    the same refusal as a Trailers-Only answer (gateway/http2/grpc.py).
    """
    if wants_grpc_answer(request.protocol, request.headers):
        answer = render_grpc_error(error)
        request.facts.grpc_status = int(grpc_status_for(error.status))
        return answer
    return error.response()


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    run: SyncStage | AsyncStage
    is_async: bool

    @classmethod
    def of(cls, name: str, run: SyncStage | AsyncStage) -> Stage:
        return cls(name, run, inspect.iscoroutinefunction(run))


class Pipeline:
    """The chain of one listener; call it with a request to get the answer."""

    __slots__ = ("_render", "_stages", "stages")

    def __init__(self, stages: Sequence[Stage], *, render: ErrorRenderer = render_error) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = tuple(stages)
        self._stages = tuple((stage.run, stage.is_async) for stage in self.stages)
        self._render = render

    def describe(self) -> str:
        return " → ".join(stage.name for stage in self.stages)

    async def __call__(self, request: Request) -> Response:
        try:
            for run, is_async in self._stages:
                answer = await run(request) if is_async else run(request)  # type: ignore[misc]
                if answer is not None:
                    return answer  # type: ignore[return-value]
        except GatewayError as error:
            return self._render(request, error)
        # The last stage (forward) always answers; reaching here is a wiring bug.
        raise RuntimeError(f"pipeline {self.describe()} ended without an answer")
