"""The HTTP/1.1 response head: framing owned by the protocol, no field able to split the answer."""

from __future__ import annotations

from gateway.http1.head import SERVER_NAME, response_head


def test_fields_go_out_in_order_with_server_date_and_the_framing_line() -> None:
    head = response_head(
        200,
        "",
        [("Content-Type", "text/plain"), ("X-Caf\u00e9", "cr\u00e8me")],
        framing=b"Content-Length: 2\r\n",
    )
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1:3] == [b"Content-Type: text/plain", "X-Caf\u00e9: cr\u00e8me".encode()]
    assert f"Server: {SERVER_NAME}".encode() in lines
    assert any(line.startswith(b"Date: ") for line in lines)
    assert head.endswith(b"Content-Length: 2\r\n\r\n")


def test_framing_fields_from_the_pipeline_are_dropped_and_an_upstream_server_is_kept() -> None:
    head = response_head(
        204,
        "",
        [
            ("Content-Length", "99"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive"),
            ("Server", "legacy/1.0"),
        ],
        framing=b"",
        keep_alive_field=b"Connection: close\r\n",
    )
    assert b"99" not in head and b"chunked" not in head and b"keep-alive" not in head
    assert head.count(b"Server: ") == 1 and b"Server: legacy/1.0\r\n" in head
    assert head.endswith(b"Connection: close\r\n\r\n")


def test_a_field_carrying_a_line_break_is_dropped_and_the_others_are_kept() -> None:
    head = response_head(
        200,
        "",
        [
            ("X-Before", "1"),
            ("X-Split", "a\r\nSet-Cookie: injected=1"),
            ("X-Bare-Lf", "b\nX-Evil: 1"),
            ("X-After", "2"),
        ],
        framing=b"Content-Length: 0\r\n",
    )
    assert b"injected" not in head and b"X-Evil" not in head
    assert b"X-Before: 1\r\n" in head and b"X-After: 2\r\n" in head
    assert head.count(b"\r\n\r\n") == 1 and head.count(b"\n") == head.count(b"\r\n")


def test_a_closing_answer_is_framed_by_its_body_and_says_connection_close() -> None:
    from gateway.errors import closing_json_error
    from gateway.http1.head import closing_answer, head_of

    refusal = closing_json_error(400, "invalid_request", "two Host fields")
    assert refusal.close is True
    wire = closing_answer(refusal)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close" in head
    assert f"\r\nContent-Length: {len(body)}".encode() in head
    assert body == refusal.body and b'"error": "invalid_request"' in body
    # An upgrade's 101 carries no framing line and no Connection: close.
    upgrade = head_of(refusal, framing=b"")
    assert b"Content-Length" not in upgrade and b"Connection: close" not in upgrade
