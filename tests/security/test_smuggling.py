"""Request smuggling: ambiguous framing written byte for byte over real TLS.

Each request below hides a second one (``GET /private/smuggled``) where some
reading of the framing would find it.  The gateway must either refuse the
request (400, connection closed, nothing upstream) or read it one way only, so
that exactly one request with framing of the gateway's own reaches the
upstream.  The upstream is the byte-recording server of ``conftest.py``: its
strict reader would report a second request, stray bytes, or framing it
cannot parse.  The caller has no certificate, so nothing may reach
``/private`` at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

import pytest

from tests.conftest import MakeGateway
from tests.security.conftest import RecordingUpstream, recording_gateway
from tests.test_proxy import RawConnection, RawResponse

SMUGGLED = "GET /private/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
S = SMUGGLED
N = len(S)
POST = "POST /public/a HTTP/1.1\r\nHost: localhost\r\n"

# Refused by the parser (llhttp) or by gateway/framing.py: 400 and close.
REFUSED: dict[str, str] = {
    # Content-Length with Transfer-Encoding, both orders (RFC 9112 §6.3).
    "cl_then_te": f"{POST}Content-Length: {N + 5}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}",
    "te_then_cl": f"{POST}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{N:x}\r\n{S}\r\n0\r\n\r\n",
    # Two Content-Lengths, different or equal, or as a list.
    "two_lengths": f"{POST}Content-Length: 0\r\nContent-Length: {N}\r\n\r\n{S}",
    "two_equal_lengths": f"{POST}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "length_list": f"{POST}Content-Length: 5, {N + 5}\r\n\r\nhello{S}",
    # Content-Length that is not 1*DIGIT.
    "length_plus": f"{POST}Content-Length: +5\r\n\r\nhello{S}",
    "length_minus": f"{POST}Content-Length: -5\r\n\r\nhello{S}",
    "length_inner_space": f"{POST}Content-Length: 5 0\r\n\r\nhello{S}",
    "length_hex": f"{POST}Content-Length: 0x5\r\n\r\nhello{S}",
    "length_overflow": f"{POST}Content-Length: 99999999999999999999999\r\n\r\nhello",
    "length_space_before_colon": f"{POST}Content-Length : {N}\r\n\r\n{S}",
    # Invalid chunk sizes and chunk framing.
    "chunk_size_overflow": f"{POST}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n{S}",
    "chunk_size_negative": f"{POST}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{S}",
    "chunk_size_0x": f"{POST}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_trailing_space": f"{POST}Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk_missing_crlf": f"{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n{S}",
    "chunk_bare_lf": f"{POST}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{S}",
    # Transfer-Encoding values that are not exactly "chunked".
    "te_chunked_identity": f"{POST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{S}",
    "te_chunked_identity_with_cl": f"{POST}Transfer-Encoding: chunked, identity\r\nContent-Length: {N + 5}\r\n\r\n0\r\n\r\n{S}",
    "te_xchunked": f"{POST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{S}",
    "te_xchunked_with_cl": f"{POST}Transfer-Encoding: xchunked\r\nContent-Length: {N + 5}\r\n\r\n0\r\n\r\n{S}",
    "te_identity": f"{POST}Transfer-Encoding: identity\r\n\r\n{S}",
    "te_twice": f"{POST}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_space_before_colon": f"{POST}Transfer-Encoding : chunked\r\nContent-Length: {N + 5}\r\n\r\n0\r\n\r\n{S}",
    "te_obs_folded": f"{POST}Transfer-Encoding:\r\n chunked\r\nContent-Length: {N + 5}\r\n\r\n0\r\n\r\n{S}",
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
    "te_http10_with_cl": f"POST /public/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: {N + 5}\r\n\r\n0\r\n\r\n{S}",
    "te_http10_keep_alive": (
        "POST /public/a HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{N:x}\r\n{S}\r\n0\r\n\r\nGET /public/after HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    ),
    # Header syntax: obs-fold, bare LF/CR, NUL, spaces in names, leading space.
    "obs_fold": "GET /public/a HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n",
    "bare_lf_everywhere": f"GET /public/a HTTP/1.1\nHost: localhost\n\n{S}",
    "bare_lf_in_head": "GET /public/a HTTP/1.1\r\nHost: localhost\nX-A: b\r\n\r\n",
    "bare_cr_in_value": "GET /public/a HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n",
    "nul_in_value": "GET /public/a HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n",
    "nul_in_name": "GET /public/a HTTP/1.1\r\nHost: localhost\r\nX-\x00A: b\r\n\r\n",
    "space_in_name": "GET /public/a HTTP/1.1\r\nHost: localhost\r\nX A: b\r\n\r\n",
    "line_starting_with_space": "GET /public/a HTTP/1.1\r\n Host: localhost\r\n\r\n",
    # Request lines.
    "request_line_trailing_space": "GET /public/a HTTP/1.1 \r\nHost: localhost\r\n\r\n",
    "request_line_tabs": "GET\t/public/a\tHTTP/1.1\r\nHost: localhost\r\n\r\n",
    "request_line_two_targets": "GET /public/a /private/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "request_line_lowercase_version": "GET /public/a http/1.1\r\nHost: localhost\r\n\r\n",
    "request_line_bad_method": "G(T /public/a HTTP/1.1\r\nHost: localhost\r\n\r\n",
    # Host: missing or twice in HTTP/1.1 (RFC 9112 §3.2).
    "no_host": "GET /public/a HTTP/1.1\r\n\r\n",
    "two_hosts": "GET /public/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@dataclass
class Exchange:
    responses: list[RawResponse]
    closed: bool


async def exchange(conn: RawConnection, raw: str, *, idle: float = 0.3) -> Exchange:
    """Send ``raw`` and read every response until the gateway closes or falls silent."""
    await conn.send(raw)
    responses: list[RawResponse] = []
    closed = False
    while True:
        try:
            # The first answer may take a moment; after it, silence means done.
            async with asyncio.timeout(5 if not responses else idle):
                peek = await conn.reader.read(1)
        except TimeoutError:
            break
        except (ConnectionError, ssl.SSLError):
            closed = True
            break
        if not peek:
            closed = True
            break
        conn.reader._buffer[:0] = peek  # type: ignore[attr-defined]  # un-read the byte
        try:
            responses.append(await conn.read_response(timeout=5))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            closed = True
            break
    return Exchange(responses, closed)


def assert_nothing_smuggled(upstream: RecordingUpstream) -> None:
    assert upstream.errors == [], upstream.errors
    assert upstream.leftovers == [], upstream.leftovers
    assert not [r.target for r in upstream.requests if "/private" in r.target]
    assert b"smuggled" not in b"".join(
        bytes(buf).split(b"\r\n\r\n", 1)[0] for buf in upstream.raw
    ), "a smuggled request line reached the upstream as a head"


@pytest.mark.parametrize("name", list(REFUSED))
async def test_ambiguous_framing_is_refused_and_nothing_reaches_the_upstream(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, name: str
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        result = await exchange(conn, REFUSED[name])
    finally:
        await conn.close()
    assert [r.status for r in result.responses] == [400], [r.body for r in result.responses]
    assert result.closed, "the connection must not be reused after a framing error"
    assert recording_upstream.requests == []
    assert_nothing_smuggled(recording_upstream)


async def test_unsupported_transfer_coding_is_501_not_relayed_unlabelled(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    # The parser removes the chunking of "gzip, chunked" but not the gzip: the
    # body would reach the upstream gzip-coded and labelled as nothing.
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        result = await exchange(
            conn, f"{POST}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    finally:
        await conn.close()
    assert [r.status for r in result.responses] == [501]
    assert result.responses[0].json()["error"] == "not_implemented"
    assert result.closed
    assert recording_upstream.requests == []


# Accepted, and read one way only: (raw, statuses the caller gets, check on the one upstream request)
NORMALISED: dict[str, tuple[str, list[int], dict[str, object]]] = {
    # "_" is not "-" to the parser: no body; the rest is a second, pipelined
    # request that meets /private's policy (401) and is never forwarded.
    "length_with_underscore": (
        f"{POST}Content_Length: {N}\r\n\r\n{S}",
        [200, 401],
        {"body": b"", "chunked": False},
    ),
    # Transfer_Encoding is just a field: Content-Length frames the body.
    "te_with_underscore": (
        f"{POST}Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        [200],
        {"body": b"hello", "chunked": False},
    ),
    "te_after_a_tab": (
        f"{POST}Transfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        [200],
        {"body": b"hello", "chunked": True},
    ),
    "request_line_double_space": (
        "GET  /public/a HTTP/1.1\r\nHost: localhost\r\n\r\n",
        [200],
        {"body": b"", "target": "/public/a"},
    ),
    # A body on GET is a body: it goes upstream as one, framed by a length.
    "get_with_a_request_as_body": (
        f"GET /public/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: {N}\r\n\r\n{S}",
        [200],
        {"body": S.encode(), "chunked": False},
    ),
    # h2c upgrade smuggling: the Upgrade must not reach the upstream, or it
    # could switch protocols and tunnel past the routing.
    "h2c_upgrade": (
        "GET /public/a HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
        [200],
        {"body": b""},
    ),
    "h2c_upgrade_not_listed_in_connection": (
        "GET /public/a HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\n\r\n",
        [200],
        {"body": b""},
    ),
}


@pytest.mark.parametrize("name", list(NORMALISED))
async def test_odd_but_unambiguous_framing_reaches_the_upstream_as_one_request(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, name: str
) -> None:
    raw, statuses, expected = NORMALISED[name]
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        result = await exchange(conn, raw)
    finally:
        await conn.close()
    assert [r.status for r in result.responses] == statuses
    assert len(recording_upstream.requests) == 1, recording_upstream.requests
    (request,) = recording_upstream.requests
    assert request.target == expected.get("target", "/public/a")
    assert request.body == expected["body"]
    if "chunked" in expected:
        assert request.chunked is expected["chunked"]
    names = request.header_names()
    # The gateway frames the request itself: at most one framing header, never
    # a caller's underscore spelling of one, no upgrade.
    assert names.count("content-length") + names.count("transfer-encoding") <= 1
    for name_ in ("content_length", "transfer_encoding", "upgrade", "http2-settings"):
        assert name_ not in names
    assert "upgrade" not in ",".join(request.values("Connection")).lower()
    assert_nothing_smuggled(recording_upstream)


async def test_pipelined_requests_each_meet_their_own_routes_policy(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    # Pipelining is legal: what matters is that the second request is a
    # request of its own to the gateway, routed and authorised like any other.
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        result = await exchange(
            conn,
            "GET /public/1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
            f"{SMUGGLED}"
            "GET /public/2 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    assert [r.status for r in result.responses] == [200, 401, 200]
    assert [r.target for r in recording_upstream.requests] == ["/public/1", "/public/2"]
    assert_nothing_smuggled(recording_upstream)
