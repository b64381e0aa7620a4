"""OpenSockets: callers re-admitted while their sockets are open, and every socket closed on shutdown.

Real relays (a caller socket, a wsproto upstream); the re-check is the
function the proxy stage passes, here returning what a test decides.
"""

from __future__ import annotations

import asyncio
import time

from gateway.errors import GatewayError, access_denied, registry_unavailable
from gateway.websocket import SHUTTING_DOWN, Closing, OpenSockets, Recheck, refusal
from tests.websocket.conftest import OpenRelay, Relayed
from tests.websocket.peers import PATIENCE

INTERVAL = 0.1  # seconds between two looks at the generation (1 s in the gateway)
REMOVED = Closing(1008, "the client certificate is not registered or not enabled")


class Standing:
    """A generation the test moves, and a re-check answering from ``refused``."""

    def __init__(self) -> None:
        self.generation = 0
        self.refused: set[str] = set()
        self.calls: list[str] = []
        self.failing = False

    def recheck_for(self, name: str) -> Recheck:
        async def recheck() -> Closing | None:
            self.calls.append(name)
            if self.failing:
                raise RuntimeError("the registry lookup broke")
            return REMOVED if name in self.refused else None

        return recheck


def _recheck_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "websocket-recheck"]


async def test_a_caller_no_longer_admitted_is_closed_with_1008_both_ways_and_only_it(
    open_relay: OpenRelay,
) -> None:
    standing = Standing()
    sockets = OpenSockets(lambda: standing.generation, interval=INTERVAL)
    alice = await open_relay(sockets=sockets, recheck=standing.recheck_for("alice"), admitted_at=0)
    bob = await open_relay(sockets=sockets, recheck=standing.recheck_for("bob"), admitted_at=0)
    await alice.caller.text("hello")
    assert await alice.caller.receive() == "hello"
    await asyncio.sleep(3 * INTERVAL)
    assert standing.calls == []  # nothing moved: nobody is re-checked
    changed = time.monotonic()
    standing.refused.add("alice")
    standing.generation += 1
    assert await alice.caller.closed_with() == (REMOVED.code, REMOVED.reason)
    assert time.monotonic() - changed < 1.0
    assert await alice.upstream.closed_with() == (REMOVED.code, REMOVED.reason)
    assert (await alice.ending()).by == "gateway"
    await bob.caller.text("bob still here")
    assert await bob.caller.receive() == "bob still here"
    assert sorted(standing.calls) == ["alice", "bob"]


async def test_a_change_during_the_upgrade_is_rechecked_at_the_first_look(
    open_relay: OpenRelay,
) -> None:
    standing = Standing()
    standing.refused.add("alice")
    sockets = OpenSockets(lambda: standing.generation, interval=INTERVAL)
    # Admitted at generation 0; the registry moved to 1 before the relay started.
    standing.generation = 1
    alice = await open_relay(sockets=sockets, recheck=standing.recheck_for("alice"), admitted_at=0)
    assert (await alice.caller.closed_with())[0] == 1008


async def test_an_expired_certificate_is_rechecked_without_any_change(
    open_relay: OpenRelay,
) -> None:
    standing = Standing()
    sockets = OpenSockets(lambda: standing.generation, interval=INTERVAL)
    alice = await open_relay(
        sockets=sockets,
        recheck=standing.recheck_for("alice"),
        admitted_at=0,
        expires_at=time.time() + 3 * INTERVAL,
    )
    bob = await open_relay(sockets=sockets, recheck=standing.recheck_for("bob"), admitted_at=0)
    standing.refused.add("alice")  # as the admission refuses an expired certificate
    assert (await alice.caller.closed_with())[0] == 1008
    assert standing.calls == ["alice"]  # bob's certificate is still valid: not re-checked
    await bob.caller.text("still here")
    assert await bob.caller.receive() == "still here"


async def test_a_recheck_that_fails_closes_the_socket_with_1011(open_relay: OpenRelay) -> None:
    standing = Standing()
    standing.failing = True
    sockets = OpenSockets(lambda: standing.generation, interval=INTERVAL)
    alice = await open_relay(sockets=sockets, recheck=standing.recheck_for("alice"), admitted_at=0)
    standing.generation += 1
    # Fail closed: a caller whose standing cannot be checked is not kept.
    assert await alice.caller.closed_with() == (1011, "the re-check failed")


async def test_no_recheck_task_outlives_the_last_watched_socket(open_relay: OpenRelay) -> None:
    standing = Standing()
    sockets = OpenSockets(lambda: standing.generation, interval=INTERVAL)
    alice = await open_relay(sockets=sockets, recheck=standing.recheck_for("alice"), admitted_at=0)
    await alice.caller.text("hello")
    assert await alice.caller.receive() == "hello"
    assert len(_recheck_tasks()) == 1
    await alice.caller.close(1000)
    await alice.ending()
    await asyncio.sleep(0)
    assert _recheck_tasks() == []
    assert len(sockets) == 0


def test_refusal_is_1008_for_a_policy_decision_and_1013_when_the_registry_is_down() -> None:
    assert refusal(access_denied()) == Closing(
        1008, "the client certificate is not registered or not enabled"
    )
    assert refusal(GatewayError(401, "invalid_token", "the token expired")).code == 1008
    assert refusal(registry_unavailable()) == Closing(1013, "the client registry is unreachable")


# --- shutdown ------------------------------------------------------------------------


async def test_close_all_sends_1001_to_both_ends_of_every_socket_and_waits_for_them(
    open_relay: OpenRelay,
) -> None:
    standing = Standing()
    sockets = OpenSockets(lambda: standing.generation, interval=INTERVAL)
    watched = await open_relay(sockets=sockets, recheck=standing.recheck_for("alice"))
    unwatched = await open_relay(sockets=sockets)  # an ``auth: none`` route: no re-check
    for relayed in (watched, unwatched):
        await relayed.caller.text("hello")
        assert await relayed.caller.receive() == "hello"
    assert len(sockets) == 2

    async def caller_answers(relayed: Relayed) -> tuple[int, str]:
        return await relayed.caller.closed_with()

    answers = [asyncio.create_task(caller_answers(r)) for r in (watched, unwatched)]
    assert await sockets.close_all(SHUTTING_DOWN, within=PATIENCE) == 0
    expected = (1001, "the gateway is shutting down")
    assert [await answer for answer in answers] == [expected, expected]
    for relayed in (watched, unwatched):
        assert await relayed.upstream.closed_with() == expected
        assert relayed.task.done()
    assert len(sockets) == 0


async def test_a_socket_opened_after_close_all_is_closed_at_once(open_relay: OpenRelay) -> None:
    sockets = OpenSockets(lambda: 0, interval=INTERVAL)
    assert await sockets.close_all() == 0
    late = await open_relay(sockets=sockets)
    assert await late.caller.closed_with() == (1001, "the gateway is shutting down")
    assert await late.upstream.closed_with() == (1001, "the gateway is shutting down")


async def test_close_all_is_bounded_by_a_caller_that_never_answers(
    open_relay: OpenRelay,
) -> None:
    sockets = OpenSockets(lambda: 0, interval=INTERVAL)
    relayed = await open_relay(sockets=sockets)
    await relayed.caller.text("hello")
    assert await relayed.caller.receive() == "hello"
    # The caller reads nothing more, so never answers the close frame.
    started = time.monotonic()
    assert await sockets.close_all(within=0.3) == 1
    assert time.monotonic() - started < 1.0
    assert await relayed.upstream.closed_with() == (1001, "the gateway is shutting down")
    # The frame was sent; the relay still waits for its answer until the
    # server cancels what is left (or CLOSE_TIMEOUT ends it).
    assert not relayed.task.done()
    relayed.task.cancel()
    await asyncio.gather(relayed.task, return_exceptions=True)
    assert await relayed.caller.closed_with() == (1001, "the gateway is shutting down")


async def test_cancelling_a_relay_sends_1001_to_both_ends(open_relay: OpenRelay) -> None:
    relayed = await open_relay()
    await relayed.caller.text("hello")
    assert await relayed.caller.receive() == "hello"
    relayed.task.cancel()
    await asyncio.gather(relayed.task, return_exceptions=True)
    assert await relayed.caller.closed_with() == (1001, "the gateway is shutting down")
    assert await relayed.upstream.closed_with() == (1001, "the gateway is shutting down")
