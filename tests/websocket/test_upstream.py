"""connect_upstream against real wsproto upstreams on loopback: the handshake sent, TLS, failures."""

from __future__ import annotations

import base64
import time

import pytest
from multidict import CIMultiDict
from wsproto.events import TextMessage

from gateway.errors import GatewayError
from gateway.pipeline.facts import RequestFacts
from gateway.websocket import UpstreamSocket, connect_upstream
from tests.pki import Pki
from tests.websocket.conftest import StartServer, server_tls
from tests.websocket.peers import WsServer, free_port

FORWARDED = [
    ("Host", "api.internal:8080"),
    ("X-Client-Id", "mtls.client"),
    ("X-Forwarded-For", "127.0.0.1"),
    ("Origin", "https://app.example"),
    # What the caller sent for its own handshake: never forwarded as is.
    ("Sec-WebSocket-Key", "Y2FsbGVyJ3Mga2V5IDEyMw=="),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ("Sec-WebSocket-Protocol", "chat, superchat"),
    # Hop-by-hop (RFC 9110 §7.6.1): wsproto writes its own Upgrade and Connection.
    ("Connection", "keep-alive, Upgrade"),
    ("Upgrade", "websocket"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
]


async def _connect(url: str, info: RequestFacts | None = None, **options: object) -> UpstreamSocket:
    kwargs: dict[str, object] = {"protocols": [], "within": 5.0}
    kwargs.update(options)
    return await connect_upstream(url, FORWARDED, info=info or RequestFacts(), **kwargs)  # type: ignore[arg-type]


def _fields(server: WsServer) -> list[tuple[str, str]]:
    request = server.requests[-1]
    return [(n.decode().lower(), v.decode()) for n, v in request.extra_headers]


async def test_the_handshake_carries_the_forwarded_fields_and_wsprotos_own(
    ws_server: WsServer,
) -> None:
    info = RequestFacts()
    upstream = await _connect(ws_server.url + "/chat/room?id=7", info)
    upstream.close()
    request = ws_server.requests[-1]
    assert (request.host, request.target) == ("api.internal:8080", "/chat/room?id=7")
    fields = _fields(ws_server)
    names = [name for name, _ in fields]
    assert ("x-client-id", "mtls.client") in fields
    assert ("x-forwarded-for", "127.0.0.1") in fields
    assert ("origin", "https://app.example") in fields
    # One key, wsproto's own; version 13; no extension offered.
    assert names.count("sec-websocket-key") == 1
    assert ("sec-websocket-key", "Y2FsbGVyJ3Mga2V5IDEyMw==") not in fields
    assert len(base64.b64decode(dict(fields)["sec-websocket-key"])) == 16
    assert names.count("sec-websocket-version") == 1
    assert request.extensions == []
    assert ("connection", "Upgrade") in fields
    assert names.count("connection") == names.count("upgrade") == 1
    assert "keep-alive" not in names
    assert "te" not in names
    assert info.upstream_status == 101
    assert info.upstream_error is None


async def test_subprotocols_are_offered_in_order_and_the_upstreams_choice_is_kept(
    start_server: StartServer,
) -> None:
    server = await start_server(subprotocols=("superchat", "chat"))
    upstream = await _connect(server.url, protocols=["chat", "superchat"])
    upstream.close()
    assert server.requests[-1].subprotocols == ["chat", "superchat"]
    assert upstream.subprotocol == "chat"
    no_choice = await _connect(server.url, protocols=["other"])
    no_choice.close()
    assert no_choice.subprotocol is None


async def test_a_multidict_of_fields_is_taken_too(ws_server: WsServer) -> None:
    fields: CIMultiDict[str] = CIMultiDict([("Host", "h.example"), ("X-A", "1"), ("X-A", "2")])
    upstream = await connect_upstream(
        ws_server.url, fields, protocols=[], within=5.0, info=RequestFacts()
    )
    upstream.close()
    assert [v for n, v in _fields(ws_server) if n == "x-a"] == ["1", "2"]
    assert ws_server.requests[-1].host == "h.example"


async def test_credentials_in_the_upstream_url_become_basic_authorization(
    ws_server: WsServer,
) -> None:
    url = ws_server.url.replace("://", "://svc:s%40cret@") + "/ws"
    upstream = await _connect(url)
    upstream.close()
    expected = "Basic " + base64.b64encode(b"svc:s@cret").decode()
    assert ("authorization", expected) in _fields(ws_server)


async def test_a_wss_upstream_is_reached_over_verified_tls(
    start_server: StartServer, upstream_pki: Pki
) -> None:
    server = await start_server(tls=server_tls(upstream_pki))
    for url in (server.url, server.url.replace("https://", "wss://")):
        upstream = await _connect(url, ssl_context=upstream_pki.client_context(None))
        assert upstream.stream.get_extra_info("ssl_object") is not None
        await upstream.end.send(TextMessage("over tls"))
        event = await upstream.end.next_event()
        assert isinstance(event, TextMessage)
        assert event.data == "over tls"
        upstream.close()


async def test_an_upstream_certificate_not_trusted_is_502(
    start_server: StartServer, upstream_pki: Pki
) -> None:
    server = await start_server(tls=server_tls(upstream_pki))
    info = RequestFacts()
    with pytest.raises(GatewayError) as refused:
        await _connect(server.url, info)  # the system trust store does not know the test CA
    assert refused.value.status == 502
    assert info.upstream_error == "unreachable: SSLCertVerificationError"


# --- failures: 502 and 504 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "upstream_error"),
    [
        ("refuse", "WebSocket upgrade refused (403)"),
        ("bad-accept", "invalid WebSocket upgrade answer: Bad accept token"),
        (
            "extension",
            "invalid WebSocket upgrade answer: unrecognized extension permessage-deflate",
        ),
        ("hang-up", "closed before the WebSocket upgrade"),
    ],
)
async def test_an_upstream_that_does_not_upgrade_is_502(
    start_server: StartServer, answer: str, upstream_error: str
) -> None:
    server = await start_server(answer=answer)
    info = RequestFacts()
    with pytest.raises(GatewayError) as refused:
        await _connect(server.url, info)
    assert (refused.value.status, refused.value.error) == (502, "bad_gateway")
    assert info.upstream_error == upstream_error
    if answer == "refuse":
        assert info.upstream_status == 403
        assert "(403)" in refused.value.description


async def test_an_upstream_that_is_down_is_502() -> None:
    info = RequestFacts()
    with pytest.raises(GatewayError) as refused:
        await _connect(f"http://127.0.0.1:{free_port()}", info)
    assert refused.value.status == 502
    assert info.upstream_error == "unreachable: ConnectionRefusedError"


async def test_an_upstream_that_never_answers_the_upgrade_is_504_within_the_bound(
    start_server: StartServer,
) -> None:
    server = await start_server(answer="silent")
    info = RequestFacts()
    started = time.monotonic()
    with pytest.raises(GatewayError) as timed_out:
        await _connect(server.url, info, within=0.3)
    # uvloop rounds timers to the millisecond: the lower bound allows for it.
    assert 0.29 <= time.monotonic() - started < 3.0
    assert (timed_out.value.status, timed_out.value.error) == (504, "gateway_timeout")
    assert info.upstream_error == "response timeout"


async def test_a_tls_handshake_that_never_completes_is_a_504_connect_timeout(
    start_server: StartServer,
) -> None:
    server = await start_server(answer="silent")  # plain TCP: it never answers a ClientHello
    info = RequestFacts()
    with pytest.raises(GatewayError) as timed_out:
        await _connect(server.url.replace("http://", "wss://"), info, within=0.3)
    assert timed_out.value.status == 504
    assert info.upstream_error == "connect timeout"


@pytest.mark.parametrize(
    ("fields", "protocols"),
    [
        ([("Host", "h"), ("X-Bad", "a\r\nInjected: 1")], []),  # a line break in a value
        ([("Host", "h"), ("X Bad", "1")], []),  # not a token
        ([("Host", "x" * 64 + ".example")], []),  # a label IDNA cannot encode (over 63)
        ([("Host", "h")], ["chät"]),  # a subprotocol is a token: ASCII
    ],
)
async def test_a_forwarded_field_that_cannot_be_sent_is_400(
    ws_server: WsServer, fields: list[tuple[str, str]], protocols: list[str]
) -> None:
    info = RequestFacts()
    with pytest.raises(GatewayError) as refused:
        await connect_upstream(ws_server.url, fields, protocols=protocols, within=5.0, info=info)
    assert refused.value.status == 400
    assert info.upstream_error == "invalid forwarded header"
    assert ws_server.requests == []
