"""The connection's lazily re-armed deadline (gateway/upstream/timer.py)."""

from __future__ import annotations

import asyncio

from gateway.upstream.timer import LazyTimer


async def test_a_pushed_deadline_fires_late_and_once() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = LazyTimer(loop)
    started = loop.time()
    timer.start(started + 0.05, lambda: fired.append(loop.time()))
    timer.push(0.2)  # before the first handle runs: it finds the deadline moved
    async with asyncio.timeout(5):
        while not fired:
            await asyncio.sleep(0.01)
    assert fired[0] - started >= 0.2 - 0.005  # uvloop rounds timers to the millisecond
    await asyncio.sleep(0.1)
    assert len(fired) == 1


async def test_a_stopped_timer_never_fires_and_lets_go_of_its_callback() -> None:
    loop = asyncio.get_running_loop()
    fired: list[bool] = []
    timer = LazyTimer(loop)
    timer.start(loop.time() + 0.05, lambda: fired.append(True))
    timer.stop()
    await asyncio.sleep(0.15)
    assert fired == []
    assert timer._on_expiry is None  # no reference cycle with its owner once stopped
