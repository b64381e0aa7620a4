"""The request head (gateway/upstream/head.py): what aiohttp's client added, and nothing unsafe."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.upstream import UnsafeHeader, request_head


def test_a_get_gets_accept_and_no_length() -> None:
    head = request_head("GET", "/x?a=1", CIMultiDict(Host="h"), False)
    assert head == b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"


def test_a_bodiless_post_says_so_and_the_callers_accept_is_kept() -> None:
    head = request_head("POST", "/", CIMultiDict(Host="h", Accept="text/plain"), False)
    assert head == b"POST / HTTP/1.1\r\nHost: h\r\nAccept: text/plain\r\nContent-Length: 0\r\n\r\n"


def test_a_body_of_unknown_length_is_chunked_and_a_known_one_is_not() -> None:
    chunked = request_head("PUT", "/", CIMultiDict(Host="h"), True)
    assert chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    sized = request_head("PUT", "/", CIMultiDict({"Host": "h", "Content-Length": "3"}), True)
    assert b"Transfer-Encoding" not in sized and b"Content-Length: 3\r\n" in sized


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
def test_a_line_break_in_a_value_is_refused(value: str) -> None:
    with pytest.raises(UnsafeHeader):
        request_head("GET", "/", CIMultiDict({"Host": "h", "X-Value": value}), False)
