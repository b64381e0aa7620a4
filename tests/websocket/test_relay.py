"""The relay between a caller socket and a real wsproto upstream, over real loopback sockets.

Messages both ways, close codes and reasons both ways, lost sides, the size
limit at and over it (both directions, binary, text, fragmented), protocol
errors, the idle timeout, pings and pongs, and backpressure.
"""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from wsproto.events import BytesMessage, Ping, Pong, TextMessage

from gateway.websocket import Closing, WebSocketLimits
from tests.websocket.conftest import OpenRelay, StartServer
from tests.websocket.peers import PATIENCE

KiB = 1 << 10
MiB = 1 << 20
LIMIT = 64 * KiB


async def test_messages_pass_both_ways_as_text_and_binary(open_relay: OpenRelay) -> None:
    relayed = await open_relay()
    caller = relayed.caller
    await caller.text("hello, wörld")
    assert await caller.receive() == "hello, wörld"
    await caller.binary(b"\x00\x01\xff")
    assert await caller.receive() == b"\x00\x01\xff"
    await caller.text("send 3")  # the upstream's own message, not an echo
    assert await caller.receive() == b"uuu"


async def test_a_fragmented_message_reaches_the_upstream_whole(open_relay: OpenRelay) -> None:
    relayed = await open_relay()
    caller = relayed.caller
    await caller.send(BytesMessage(b"one ", message_finished=False))
    await caller.send(BytesMessage(b"two ", message_finished=False))
    await caller.send(BytesMessage(b"three"))
    assert await caller.receive() == b"one two three"


# --- close codes and reasons ---------------------------------------------------------


async def test_upstream_close_code_and_reason_reach_the_caller_and_are_echoed(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    await relayed.caller.text("close 4001 session expired")
    assert await relayed.caller.closed_with() == (4001, "session expired")
    # §5.5.1: the upstream's close frame is answered with its own code.
    assert await relayed.upstream.closed_with() == (4001, "session expired")
    ending = await relayed.ending()
    assert (ending.by, ending.to_caller) == ("upstream", Closing(4001, "session expired"))


async def test_caller_close_code_and_reason_reach_the_upstream_and_are_echoed(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    await relayed.caller.close(4002, "user logged out")
    assert await relayed.upstream.closed_with() == (4002, "user logged out")
    assert await relayed.caller.closed_with() == (4002, "user logged out")
    assert (await relayed.ending()).by == "caller"


async def test_a_close_frame_without_a_code_is_relayed_without_one(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    await relayed.caller.close(None)
    # wsproto reports a close frame without a status code as 1005 (§7.1.5).
    assert await relayed.upstream.closed_with() == (1005, "")
    assert await relayed.caller.closed_with() == (1005, "")


async def test_upstream_vanishing_without_a_close_frame_closes_the_caller_with_1014(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    await relayed.caller.text("vanish")
    # Read as bytes: wsproto refuses 1014 (IANA's "Bad Gateway", not in its
    # table of codes), browsers and aiohttp take it.
    reason = b"the upstream connection was lost"
    frame = b"\x88" + bytes([2 + len(reason)]) + struct.pack("!H", 1014) + reason
    async with asyncio.timeout(PATIENCE):
        received = b""
        while len(received) < len(frame) and (data := await relayed.caller.stream.read()):
            received += data
    assert received == frame
    await relayed.caller.close(1014, "the upstream connection was lost")  # the answer (§5.5.1)
    assert (await relayed.ending()).by == "upstream"
    assert (await relayed.ending()).by == "upstream"


async def test_caller_vanishing_without_a_close_frame_closes_the_upstream_with_1001(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    await relayed.caller.text("hello")
    assert await relayed.caller.receive() == "hello"
    relayed.caller.stream.abort()
    assert await relayed.upstream.closed_with() == (1001, "the caller went away")
    assert (await relayed.ending()).by == "caller"


async def test_invalid_utf8_from_the_caller_fails_it_with_1007_and_tells_the_upstream(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    # A masked text frame (mask 0: the payload as is) whose payload is not UTF-8.
    relayed.caller.stream.write(b"\x81\x82" + struct.pack("!I", 0) + b"\xff\xfe")
    reason = "the caller broke the WebSocket protocol"
    assert await relayed.caller.closed_with() == (1007, reason)
    assert await relayed.upstream.closed_with() == (1007, reason)


async def test_an_unmasked_frame_from_the_caller_fails_it_with_1002(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    relayed.caller.stream.write(b"\x82\x01x")  # §5.1: a client must mask every frame
    assert (await relayed.caller.closed_with())[0] == 1002
    assert (await relayed.upstream.closed_with())[0] == 1002


# --- the message-size limit ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["binary", "text"])
async def test_caller_message_of_exactly_the_limit_passes_and_one_byte_more_closes_with_1009(
    open_relay: OpenRelay, kind: str
) -> None:
    relayed = await open_relay(limits=WebSocketLimits(max_message_bytes=LIMIT))
    caller = relayed.caller
    if kind == "text":
        # The limit counts UTF-8 bytes, not characters: "é" is two.
        exact = "é" * (LIMIT // 2)
        await caller.text(exact)
        assert await caller.receive() == exact
        await caller.text(exact + "a")
    else:
        await caller.binary(b"\0" * LIMIT)
        assert await caller.receive() == b"\0" * LIMIT
        await caller.binary(b"\0" * (LIMIT + 1))
    reason = f"message over the {LIMIT}-byte limit"
    assert await caller.closed_with() == (1009, reason)
    assert await relayed.upstream.closed_with() == (1009, reason)


@pytest.mark.parametrize("kind", ["send", "text"])
async def test_upstream_message_of_exactly_the_limit_passes_and_one_byte_more_closes_with_1009(
    open_relay: OpenRelay, kind: str
) -> None:
    relayed = await open_relay(limits=WebSocketLimits(max_message_bytes=LIMIT))
    caller = relayed.caller
    await caller.text(f"{kind} {LIMIT}")
    received = await caller.receive()
    assert isinstance(received, bytes | str)
    assert len(received.encode() if isinstance(received, str) else received) == LIMIT
    await caller.text(f"{kind} {LIMIT + 1}")
    assert await caller.closed_with() == (1009, f"message over the {LIMIT}-byte limit")
    assert (await relayed.upstream.closed_with())[0] == 1009


async def test_the_limit_holds_for_the_message_not_its_fragments(open_relay: OpenRelay) -> None:
    relayed = await open_relay(limits=WebSocketLimits(max_message_bytes=LIMIT))
    caller = relayed.caller
    for _ in range(2):
        await caller.send(TextMessage("a" * (LIMIT // 2), message_finished=False))
    await caller.send(TextMessage("a"))
    assert (await caller.closed_with())[0] == 1009
    assert (await relayed.upstream.closed_with())[0] == 1009


# --- the idle timeout and pings ------------------------------------------------------


async def test_idle_socket_is_closed_with_1001_and_a_reason_both_ways(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay(limits=WebSocketLimits(idle_timeout=0.5))
    started = time.monotonic()
    assert await relayed.caller.closed_with() == (1001, "idle for 0.5 s")
    assert await relayed.upstream.closed_with() == (1001, "idle for 0.5 s")
    assert 0.49 <= time.monotonic() - started < 0.5 + PATIENCE / 2  # uvloop: millisecond timers
    assert (await relayed.ending()).by == "gateway"


async def test_caller_pings_reach_the_upstream_whose_pongs_come_back_and_keep_it_open(
    open_relay: OpenRelay,
) -> None:
    idle = 1.0
    relayed = await open_relay(limits=WebSocketLimits(idle_timeout=idle))
    caller = relayed.caller
    started = time.monotonic()
    pings = 0
    while time.monotonic() - started < 2 * idle:
        await caller.send(Ping(b"%d" % pings))
        pong = await caller.receive()
        assert isinstance(pong, Pong)
        assert pong.payload == b"%d" % pings
        pings += 1
        await asyncio.sleep(idle / 8)
    # The upstream answered them: the gateway relays pings, it does not answer them.
    assert relayed.upstream.pings == [b"%d" % n for n in range(pings)]
    await caller.text(f"still open after {pings} pings")
    assert await caller.receive() == f"still open after {pings} pings"
    assert await caller.closed_with() == (1001, f"idle for {idle:g} s")


async def test_upstream_pings_reach_the_caller_whose_pong_goes_back(
    open_relay: OpenRelay,
) -> None:
    relayed = await open_relay()
    await relayed.caller.text("ping are you there")
    ping = await relayed.caller.receive()
    assert isinstance(ping, Ping)
    assert ping.payload == b"are you there"
    await relayed.caller.send(ping.response())
    async with asyncio.timeout(PATIENCE):
        assert await relayed.upstream.pongs.get() == b"are you there"


# --- backpressure --------------------------------------------------------------------


async def test_a_caller_that_does_not_read_stops_the_upstream_instead_of_filling_memory(
    open_relay: OpenRelay, start_server: StartServer
) -> None:
    buffers = 32 * KiB  # the kernel's, on every socket: no autotuning to hide the gateway's
    upstream = await start_server(buffers=buffers)
    relayed = await open_relay(upstream=upstream, buffers=buffers)
    count, size = 256, 64 * KiB
    await relayed.caller.text(f"flood {count} {size}")
    # The caller reads nothing: the upstream soon cannot send more.
    settled = -1
    async with asyncio.timeout(PATIENCE):
        while settled != upstream.flooded:
            settled = upstream.flooded
            await asyncio.sleep(0.5)
    # What is on the way: the sockets' buffers, the transports' high-water
    # marks (64 KiB each way), the message the relay holds.
    assert upstream.flooded < 2 * MiB, upstream.flooded
    for _ in range(count):
        assert await relayed.caller.receive() == b"f" * size
    assert upstream.flooded == count * size
