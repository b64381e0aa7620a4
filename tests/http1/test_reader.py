"""The caller's side of persistence (RFC 9112 §9.3, §9.6)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.http1.reader import caller_keeps_alive
from gateway.pipeline.messages import Request, RequestBody


def request(version: tuple[int, int], connection: str | None, *, body_read: bool = True) -> Request:
    headers: CIMultiDict[str] = CIMultiDict()
    if connection is not None:
        headers["Connection"] = connection
    content = RequestBody.complete(b"") if body_read else RequestBody()
    return Request(
        method="POST",
        raw_path="/",
        path="/",
        query_string="",
        headers=headers,
        version=version,
        remote="127.0.0.1",
        scheme="https",
        transport=None,
        content=content,
        body_exists=not body_read,
    )


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        ((1, 1), None, True),
        ((1, 1), "keep-alive", True),
        ((1, 1), "close", False),
        ((1, 1), "Upgrade, Close", False),
        ((1, 0), None, False),
        ((1, 0), "Keep-Alive", True),
        ((1, 0), "close", False),
    ],
)
def test_the_version_and_connection_field_decide(
    version: tuple[int, int], connection: str | None, expected: bool
) -> None:
    assert caller_keeps_alive(request(version, connection)) is expected


def test_a_body_left_unread_ends_the_connection_whatever_the_caller_asked() -> None:
    # An early answer (401 to Expect, 408 to a trickle): what is left of the
    # body would be parsed as the next request.
    assert caller_keeps_alive(request((1, 1), "keep-alive", body_read=False)) is False
