"""The lazily moved deadline of connections (gateway/timer.py)."""

from __future__ import annotations

import asyncio

from gateway.timer import LazyTimer


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
    assert not timer.armed  # no reference cycle with its owner once stopped


async def test_a_deadline_moved_earlier_fires_at_the_earlier_time() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = LazyTimer(loop)
    started = loop.time()
    timer.start(started + 600, lambda: fired.append(loop.time()))  # an idle keep-alive wait
    timer.start(started + 0.05, lambda: fired.append(loop.time()))  # a head started: 50 ms
    async with asyncio.timeout(5):
        while not fired:
            await asyncio.sleep(0.01)
    assert fired[0] - started < 1.0
    assert len(fired) == 1


async def test_a_disarmed_timer_does_not_fire_and_can_be_started_again() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    timer = LazyTimer(loop)
    timer.start(loop.time() + 0.03, lambda: fired.append("first"))
    timer.disarm()
    await asyncio.sleep(0.1)
    assert fired == [] and not timer.armed
    timer.start(loop.time() + 0.03, lambda: fired.append("second"))
    async with asyncio.timeout(5):
        while not fired:
            await asyncio.sleep(0.01)
    assert fired == ["second"]
