"""The pipeline: named stages in order, the first answer wins, one error rendering."""

from __future__ import annotations

import json
from collections.abc import Awaitable

import pytest
from multidict import CIMultiDict

from gateway.errors import GatewayError
from gateway.pipeline.chain import Pipeline, Stage
from gateway.pipeline.messages import Request, RequestBody, Response


def request(path: str = "/") -> Request:
    return Request(
        method="GET",
        raw_path=path,
        path=path,
        query_string="",
        headers=CIMultiDict(),
        version=(1, 1),
        remote="127.0.0.1",
        scheme="https",
        transport=None,
        content=RequestBody.complete(b""),
        body_exists=False,
    )


async def test_stages_run_in_order_sync_and_async_until_one_answers() -> None:
    seen: list[str] = []

    def first(_: Request) -> None:
        seen.append("first")

    async def second(_: Request) -> Response:
        seen.append("second")
        return Response(204)

    async def never(_: Request) -> Response:
        raise AssertionError("a stage after the answer ran")

    pipeline = Pipeline([Stage.of("a", first), Stage.of("b", second), Stage.of("c", never)])
    assert pipeline.describe() == "a → b → c"
    assert (await pipeline(request())).status == 204
    assert seen == ["first", "second"]


async def test_a_stage_decides_per_request_whether_it_waits() -> None:
    """A plain function may answer at once or hand back what to wait for (the cached
    authentication and the first request's lookup)."""
    seen: list[str] = []

    async def lookup(request: Request) -> None:
        seen.append(f"looked up {request.path}")

    def authenticate(request: Request) -> Awaitable[None] | None:
        if request.path == "/cached":
            seen.append("cached")
            return None
        return lookup(request)

    async def refused_later(_: Request) -> Response | None:
        raise GatewayError(403, "access_denied", "no")

    def authorize(request: Request) -> Awaitable[Response | None] | None:
        return refused_later(request) if request.path == "/refused" else None

    pipeline = Pipeline(
        [
            Stage.of("authenticate", authenticate),
            Stage.of("authorize", authorize),
            Stage.of("answer", lambda _: Response(200)),
        ]
    )
    assert (await pipeline(request("/cached"))).status == 200
    assert (await pipeline(request("/first"))).status == 200
    assert (await pipeline(request("/refused"))).status == 403  # raised after the await
    assert seen == ["cached", "looked up /first", "looked up /refused"]


async def test_a_refusal_from_any_stage_is_rendered_once_as_json() -> None:
    def refuse(_: Request) -> None:
        raise GatewayError(403, "access_denied", "no", details={"thumbprint": "ab"})

    answer = await Pipeline([Stage.of("refuse", refuse)])(request())
    assert answer.status == 403
    assert dict(answer.headers)["Content-Type"] == "application/json"
    assert dict(answer.headers)["Cache-Control"] == "no-store"
    assert json.loads(answer.body) == {
        "error": "access_denied",
        "error_description": "no",
        "thumbprint": "ab",
    }


async def test_a_chain_that_never_answers_is_a_wiring_error() -> None:
    with pytest.raises(RuntimeError, match="ended without an answer"):
        await Pipeline([Stage.of("nothing", lambda _: None)])(request())
