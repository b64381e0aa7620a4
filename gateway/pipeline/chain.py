"""A listener's pipeline: named stages run in order until one answers.

Built once per listener and logged at start, e.g.

    framing → endpoints → route → authenticate → authorize → continue → identity headers → forward

Each stage takes the ``Request`` and returns None (go on), the
``Response``, or an awaitable of either when it has to wait (an upstream, a
registry lookup); a stage may also raise ``GatewayError``, which is rendered
in one place (``render_error``): JSON for HTTP callers, gRPC status for gRPC
ones.  The observer (metrics, access log) runs after the answer went out,
in the listener protocol.

A stage decides per request whether it waits: authentication served from
the connection's cache answers at once, and only a lookup returns a
coroutine.  A coroutine frame per stage per request is measurable at this
scale (bench/RESULTS.md), so the usual request awaits once, in ``forward``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.http2.grpc import grpc_status_for, render_grpc_error, wants_grpc_answer
from gateway.pipeline.messages import Request, Response

StageResult = Response | Awaitable[Response | None] | None
StageRun = Callable[[Request], StageResult]
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
    run: StageRun

    @classmethod
    def of(cls, name: str, run: StageRun) -> Stage:
        return cls(name, run)


class Pipeline:
    """The chain of one listener; call it with a request to get the answer."""

    __slots__ = ("_render", "_runs", "stages")

    def __init__(self, stages: Sequence[Stage], *, render: ErrorRenderer = render_error) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = tuple(stages)
        self._runs = tuple(stage.run for stage in self.stages)
        self._render = render

    def describe(self) -> str:
        return " → ".join(stage.name for stage in self.stages)

    async def __call__(self, request: Request) -> Response:
        try:
            for run in self._runs:
                answer = run(request)
                if answer is None:
                    continue
                if not isinstance(answer, Response):
                    waited = await answer
                    if waited is None:
                        continue
                    return waited
                return answer
        except GatewayError as error:
            return self._render(request, error)
        # The last stage (forward) always answers; reaching here is a wiring bug.
        raise RuntimeError(f"pipeline {self.describe()} ended without an answer")
