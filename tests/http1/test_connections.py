"""gateway.http1.connections: the open-connection set and its high-water mark."""

from __future__ import annotations

from gateway.http1.connections import ConnectionSet


class _Idle:
    busy = False

    def close_when_idle(self) -> None: ...

    def cut(self) -> None: ...

    async def finished(self) -> None: ...


def test_the_peak_is_the_most_open_at_once_since_the_last_look() -> None:
    connections = ConnectionSet()
    opened = [_Idle() for _ in range(5)]
    for connection in opened:
        connections.add(connection)
    for connection in opened[:4]:
        connections.discard(connection)
    assert len(connections) == 1
    assert connections.take_peak() == 5  # all five were open together
    assert connections.take_peak() == 1  # restarts from the count at the last look
    connections.discard(opened[4])
    assert connections.take_peak() == 1
    assert connections.take_peak() == 0
