"""One request stream on the server side: its body, its task, and the credit it holds back."""

from __future__ import annotations

import asyncio

from gateway.pipeline.messages import RequestBody


class InboundStream:
    """Flow control on a request body (RFC 9113 §5.2.1): credit goes back as the pipeline reads.

    DATA is acknowledged on arrival while the pipeline keeps up; once its
    ``RequestBody`` is past its high-water mark (``pause``), the credit is
    held here, so the caller's window closes, until it caught up (``resume``).
    """

    __slots__ = ("body", "id", "paused", "remote_open", "task", "unacked")

    def __init__(self, stream_id: int, *, remote_open: bool) -> None:
        self.id = stream_id
        self.remote_open = remote_open  # the caller may still send DATA
        self.body: RequestBody | None = None
        self.task: asyncio.Task[None] | None = None
        self.unacked = 0  # flow-controlled bytes received while the pipeline is behind
        self.paused = False

    def feed(self, data: bytes, flow_controlled: int) -> int:
        """Hand ``data`` to the body; the credit to give back now."""
        assert self.body is not None
        self.body.feed(data)  # may call pause()
        if self.paused:
            self.unacked += flow_controlled
            return 0
        return flow_controlled

    def pause(self) -> None:
        self.paused = True

    def take_credit(self) -> int:
        """Resumed (or done): the credit held back, to be given now."""
        self.paused = False
        credit, self.unacked = self.unacked, 0
        return credit
