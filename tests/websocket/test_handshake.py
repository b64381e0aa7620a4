"""The caller's opening handshake: recognising it, refusing a bad one, and the 101 (RFC 6455 §4.2)."""

from __future__ import annotations

import h11
import pytest
from multidict import CIMultiDict
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.extensions import PerMessageDeflate

from gateway.errors import GatewayError
from gateway.pipeline.facts import RequestFacts
from gateway.websocket import (
    accept_headers,
    check_upgrade,
    connect_upstream,
    is_upgrade,
    offered_protocols,
)
from tests.websocket.conftest import StartServer
from tests.websocket.peers import PATIENCE

# RFC 6455 §1.3's example: this key is answered with this accept value.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _upgrade(**fields: str) -> CIMultiDict[str]:
    headers = CIMultiDict(
        {
            "Host": "gw.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": SAMPLE_KEY,
            "Sec-WebSocket-Version": "13",
        }
    )
    for name, value in fields.items():
        name = name.replace("_", "-")
        if value:
            headers[name] = value
        else:
            headers.pop(name, None)
    return headers


@pytest.mark.parametrize(
    ("upgrade", "connection", "expected"),
    [
        ("websocket", "Upgrade", True),
        ("WebSocket", "keep-alive, Upgrade", True),
        ("websocket", "", False),
        ("h2c", "Upgrade", False),
        ("", "Upgrade", False),
    ],
)
def test_is_upgrade(upgrade: str, connection: str, expected: bool) -> None:
    assert is_upgrade(_upgrade(Upgrade=upgrade, Connection=connection)) is expected


def test_offered_protocols_in_order_across_fields() -> None:
    headers = CIMultiDict([("Sec-WebSocket-Protocol", "chat, v2"), ("Sec-WebSocket-Protocol", "x")])
    assert offered_protocols(headers) == ["chat", "v2", "x"]
    assert offered_protocols(CIMultiDict()) == []


def test_a_valid_handshake_passes_the_check() -> None:
    check_upgrade(_upgrade())


@pytest.mark.parametrize("version", ["", "8", "14"])
def test_another_websocket_version_is_426_naming_13(version: str) -> None:
    with pytest.raises(GatewayError) as refused:
        check_upgrade(_upgrade(Sec_WebSocket_Version=version))
    assert refused.value.status == 426
    assert refused.value.headers["Sec-WebSocket-Version"] == "13"


@pytest.mark.parametrize("key", ["", "not base64!", "c2hvcnQ=", SAMPLE_KEY + SAMPLE_KEY])
def test_a_key_that_is_not_16_bytes_in_base64_is_400(key: str) -> None:
    with pytest.raises(GatewayError) as refused:
        check_upgrade(_upgrade(Sec_WebSocket_Key=key))
    assert (refused.value.status, refused.value.error) == (400, "invalid_request")


async def test_the_101_completes_a_real_clients_handshake_with_the_upstreams_subprotocol(
    start_server: StartServer,
) -> None:
    # A wsproto client offers two subprotocols and permessage-deflate.
    client = WSConnection(ConnectionType.CLIENT)
    offer = Request(
        host="gw.example",
        target="/ws",
        subprotocols=["chat", "v2"],
        extensions=[PerMessageDeflate()],
    )
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(client.send(offer))
    parsed = parser.next_event()
    assert isinstance(parsed, h11.Request)
    headers = CIMultiDict((n.decode(), v.decode()) for n, v in parsed.headers)
    check_upgrade(headers)
    # The upstream picks "v2"; the caller's 101 names it, and no extension.
    server = await start_server(subprotocols=("v2",))
    upstream = await connect_upstream(
        server.url,
        [("Host", "upstream")],
        protocols=offered_protocols(headers),
        within=PATIENCE,
        info=RequestFacts(),
    )
    upstream.close()
    fields = accept_headers(headers, upstream)
    assert [name for name, _ in fields] == [
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Accept",
        "Sec-WebSocket-Protocol",
    ]
    head = "HTTP/1.1 101 Switching Protocols\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    client.receive_data(head.encode())
    accepted = list(client.events())
    assert len(accepted) == 1
    assert isinstance(accepted[0], AcceptConnection)
    assert accepted[0].subprotocol == "v2"
    assert accepted[0].extensions == []


async def test_the_accept_value_is_rfc_6455s_example_and_no_subprotocol_is_named_unchosen(
    start_server: StartServer,
) -> None:
    server = await start_server()
    upstream = await connect_upstream(
        server.url, [("Host", "u")], protocols=["chat"], within=PATIENCE, info=RequestFacts()
    )
    upstream.close()
    assert accept_headers(_upgrade(), upstream) == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", SAMPLE_ACCEPT),
    ]
    with pytest.raises(GatewayError):
        accept_headers(_upgrade(Sec_WebSocket_Key=""), upstream)
