"""WebSocketEnd: wsproto's frame layer over a real socket, the close handshake bounded in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from gateway.websocket import Closing
from gateway.websocket.end import WebSocketEnd
from tests.websocket.peers import PATIENCE, Peer, tcp_pair

Pair = tuple[WebSocketEnd, Peer]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """The gateway's end (the server side) and the caller's, over a loopback socket."""
    caller_end, gateway_end, close = await tcp_pair()
    yield (
        WebSocketEnd(gateway_end, Connection(ConnectionType.SERVER)),
        Peer(caller_end, Connection(ConnectionType.CLIENT)),
    )
    close()


async def test_events_come_in_order_and_none_at_the_end_of_the_stream(pair: Pair) -> None:
    end, peer = pair
    await peer.text("one")
    await peer.text("two")
    first, second = await end.next_event(), await end.next_event()
    assert isinstance(first, TextMessage)
    assert isinstance(second, TextMessage)
    assert (first.data, second.data) == ("one", "two")
    peer.stream.close()
    assert await end.next_event() is None
    assert end.ended


async def test_a_reset_connection_ends_the_events_too(pair: Pair) -> None:
    end, peer = pair
    peer.stream.abort()
    assert await end.next_event() is None


async def test_a_close_frame_is_the_peers_and_a_bad_frame_is_wsproto_refusing_it(
    pair: Pair,
) -> None:
    end, peer = pair
    peer.stream.write(b"\x81\x01x")  # unmasked, from a client (§5.1)
    refused = await end.next_event()
    assert isinstance(refused, CloseConnection)
    assert end.refused(refused)
    assert refused.code == 1002


async def test_a_peer_that_closed_first_only_gets_the_answer(pair: Pair) -> None:
    end, peer = pair
    await peer.close(4000, "bye")
    event = await end.next_event()
    assert isinstance(event, CloseConnection)
    assert not end.refused(event)
    started = time.monotonic()
    await end.close(Closing(4000, "bye"))
    assert time.monotonic() - started < 1.0  # nothing to wait for
    assert end.state is ConnectionState.CLOSED
    closed = await peer.receive()
    assert isinstance(closed, CloseConnection)
    assert (closed.code, closed.reason) == (4000, "bye")


async def test_close_waits_for_the_answer_and_discards_data_meanwhile(pair: Pair) -> None:
    end, peer = pair
    closing = asyncio.create_task(end.close(Closing(1000, "done")))
    await peer.text("crossing the close frame")  # sent before the peer read it
    assert (await peer.receive()) == CloseConnection(1000, "done")
    await peer.send(CloseConnection(1000, "done"))
    async with asyncio.timeout(PATIENCE):
        await closing
    assert end.state is ConnectionState.CLOSED


async def test_close_gives_up_on_a_peer_that_never_answers(pair: Pair) -> None:
    end, _ = pair
    started = time.monotonic()
    await end.close(Closing(1001, "going"), within=0.2)
    assert 0.19 <= time.monotonic() - started < 2.0  # uvloop: millisecond timers
    assert end.state is ConnectionState.LOCAL_CLOSING


async def test_nothing_but_the_answer_is_sent_after_a_close(pair: Pair) -> None:
    end, peer = pair
    await peer.close(1000)
    assert isinstance(await end.next_event(), CloseConnection)
    await end.send(TextMessage("too late"))  # dropped: the peer is closing (§5.5.1)
    await end.close(Closing(1000))
    assert await peer.receive() == CloseConnection(1000, "")


async def test_1005_is_sent_as_a_close_frame_without_a_code(pair: Pair) -> None:
    end, peer = pair
    assert end.send_close_now(Closing(1005))
    await end.stream.drain()
    closed = await peer.receive()
    assert isinstance(closed, CloseConnection)
    assert closed.code == 1005


async def test_a_long_reason_is_cut_to_123_bytes_at_a_character_boundary(pair: Pair) -> None:
    end, peer = pair
    assert end.send_close_now(Closing(4000, "é" * 100))  # 200 bytes
    closed = await peer.receive()
    assert isinstance(closed, CloseConnection)
    assert closed.reason == "é" * 61  # 122 bytes: the 62nd would not fit whole
