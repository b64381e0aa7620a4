"""gateway.ops.heap: malloc_trim once the open connections fell from a peak."""

from __future__ import annotations

import asyncio
import time

from gateway.ops.heap import CHECK_SECONDS, MIN_DROP, HeapTrimmer, _load_malloc_trim, mallinfo
from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued


def test_the_c_library_of_this_platform_has_malloc_trim() -> None:
    # glibc (Debian, Ubuntu, the container images): the trim is real here.
    trim = _load_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


def test_mallinfo_counts_a_large_allocation_while_it_lives() -> None:
    # glibc >= 2.33 (Debian 12 has 2.36); a 4 MiB buffer is malloc'd whatever
    # PYTHONMALLOC says (pymalloc takes only blocks up to 512 bytes).
    before = mallinfo()
    assert before is not None
    buffer = bytearray(4 << 20)
    during = mallinfo()
    assert during is not None
    assert (during.uordblks + during.hblkhd) - (before.uordblks + before.hblkhd) >= 4 << 20
    del buffer


def test_a_trim_is_due_only_after_a_large_drop_from_the_peak() -> None:
    count = [0]
    trimmer = HeapTrimmer(lambda: count[0], min_drop=256, trim=lambda pad: 1)
    for now, due in (
        (100, False),  # rising
        (2000, False),  # the peak
        (1900, False),  # churn under a steady load
        (1100, False),  # down by 900, but not to half the peak
        (1000, True),  # down to half, by >= 256: the peak restarts here
        (900, False),  # down by 100 from 1000
        (300, True),  # down by 700, below half of 1000
    ):
        count[0] = now
        assert trimmer.due() is due, now


def test_a_small_gateway_never_trims() -> None:
    count = [0]
    trimmer = HeapTrimmer(lambda: count[0], min_drop=256, trim=lambda pad: 1)
    for now in (10, 200, 0, 150, 0):
        count[0] = now
        assert trimmer.due() is False  # never 256 connections to give back


async def test_the_trimmer_calls_malloc_trim_off_the_loop_after_a_burst() -> None:
    count = [3000]
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    trimmer = HeapTrimmer(lambda: count[0], check_seconds=0.05, trim=trim)
    trimmer.start()
    try:
        await asyncio.sleep(0.2)
        assert calls == []  # at its peak
        count[0] = 10
        for _ in range(40):
            if calls:
                break
            await asyncio.sleep(0.05)
        assert calls == [0]
        await asyncio.sleep(0.2)
        assert calls == [0]  # once per burst
    finally:
        await trimmer.stop()
    assert trimmer.trims == 1


def test_a_burst_between_two_looks_is_seen_through_the_high_water_mark() -> None:
    # The count is 0 at every look; only the high-water mark saw the 2,000.
    peaks = [0, 2000, 0]
    trimmer = HeapTrimmer(lambda: 0, peak=lambda: peaks.pop(0), min_drop=256, trim=lambda pad: 1)
    assert trimmer.due() is False  # nothing yet
    assert trimmer.due() is True  # a burst came and went since the last look
    assert trimmer.due() is False  # once per burst


async def test_the_trim_follows_a_full_collection() -> None:
    # The collection empties the interpreter's free lists first, so the
    # pymalloc arenas their blocks held can go back too.
    count = [3000]
    calls: list[str] = []

    def trim(pad: int) -> int:
        calls.append("trim")
        return 1

    trimmer = HeapTrimmer(
        lambda: count[0], check_seconds=0.05, trim=trim, collect=lambda: calls.append("collect")
    )
    trimmer.start()
    try:
        await asyncio.sleep(0.1)
        count[0] = 0
        for _ in range(40):
            if calls:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        assert calls == ["collect", "trim"]
    finally:
        await trimmer.stop()


async def test_a_running_gateway_trims_after_a_burst_of_real_connections(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    # The production wiring: the listeners' connection set feeds the trimmer
    # its high-water mark, so a burst that opens and closes between two of
    # its looks is still followed by one trim.
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))]
    )
    heap = gw.running.heap
    assert heap is not None and heap.trims == 0
    context = gw.ssl_context(client_cert)

    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"GET /burst HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        return writer

    burst = await asyncio.gather(*(one() for _ in range(MIN_DROP + 44)))
    assert len(gw.running.connections) >= MIN_DROP + 44
    for writer in burst:
        writer.close()
    deadline = time.monotonic() + 3 * CHECK_SECONDS
    while heap.trims == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert heap.trims == 1
