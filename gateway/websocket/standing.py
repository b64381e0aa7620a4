"""The standing of open WebSockets: is their caller still admitted?

A WebSocket is one request admitted once, at its upgrade, but it may stay
open for hours.  The admission depends on the registry and the trust material
(CRLs, CAs), whose generations change when they do (gateway/auth/ caches
identities by them for the same reason), and on the certificate's notAfter.
So one task per listener compares the generations each second and, only when
they moved or a certificate expired, re-runs the admission of the sockets
concerned: nothing is done per message, and a client removed, disabled or
revoked loses its sockets within about a second of the gateway seeing the
change (the YAML registry and the TLS files are polled each second, Redis
pushes its changes).

The same object knows every open relay of its listener, re-checked or not,
so that a gateway stopping can close them all (``close_all``) with a 1001
to both ends rather than cut them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from wsproto.frame_protocol import CloseReason

from gateway.errors import GatewayError
from gateway.websocket.end import CLOSE_TIMEOUT, Closing
from gateway.websocket.relay import SHUTTING_DOWN, Relay

log = logging.getLogger("gateway.websocket")

# Seconds between two looks at the generations.
RECHECK_INTERVAL = 1.0

Recheck = Callable[[], Awaitable[Closing | None]]  # None: the caller is still admitted


def refusal(error: GatewayError) -> Closing:
    """The close frame for a caller the re-check no longer admits."""
    # 1013 "Try Again Later" when the registry cannot answer (the client may
    # well be fine); anything else is a policy decision (1008, RFC 6455 §7.4.1).
    code = CloseReason.TRY_AGAIN_LATER if error.status == 503 else CloseReason.POLICY_VIOLATION
    return Closing(code, error.description)


@dataclass(slots=True)
class _Watched:
    recheck: Recheck
    expires_at: float  # wall clock: the certificate's notAfter


class OpenSockets:
    """The open relays of one listener, re-admitted when their standing may have changed."""

    def __init__(
        self, generation: Callable[[], Hashable], *, interval: float = RECHECK_INTERVAL
    ) -> None:
        self._generation = generation
        self._interval = interval
        self._open: set[Relay] = set()
        self._watched: dict[Relay, _Watched] = {}  # the open relays with a re-check
        self._seen: Hashable = None
        self._stale = False
        self._next_expiry = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._closing: Closing | None = None  # set by close_all: new relays end at once

    def __len__(self) -> int:
        return len(self._open)

    def watch(
        self,
        relay: Relay,
        recheck: Recheck | None,
        *,
        admitted_at: Hashable = None,
        expires_at: float = float("inf"),
    ) -> None:
        """Follow ``relay``, admitted at generation ``admitted_at``, until ``forget``.

        Without ``recheck`` (a route without authentication) the relay is only
        known, for ``close_all``.
        """
        self._open.add(relay)
        if self._closing is not None:
            relay.stop(self._closing)
            return
        if recheck is None:
            return
        now = self._generation()
        if not self._watched:
            self._seen, self._stale = now, False
        self._watched[relay] = _Watched(recheck, expires_at)
        self._next_expiry = min(self._next_expiry, expires_at)
        if admitted_at != now:
            # Changed while the upgrade was in flight: the next look re-checks.
            self._stale = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="websocket-recheck")

    def forget(self, relay: Relay) -> None:
        self._open.discard(relay)
        self._watched.pop(relay, None)
        if not self._watched and self._task is not None:
            # Nothing left to watch: no task lingers (a gateway stopping
            # would otherwise leave it pending when its loop closes).
            self._task.cancel()
            self._task = None

    async def close_all(
        self, closing: Closing = SHUTTING_DOWN, *, within: float = CLOSE_TIMEOUT + 1.0
    ) -> int:
        """Close every open relay with ``closing`` (both ends), waiting at most ``within`` s.

        For a gateway stopping: each relay runs its two close handshakes (each
        bounded by CLOSE_TIMEOUT) and returns; a relay upgraded after this call
        is closed as soon as it starts.  Returns how many were still open when
        ``within`` ran out (the server then cancels them: both ends still get
        the close frame, without the wait for an answer).
        """
        self._closing = closing
        relays = list(self._open)
        for relay in relays:
            relay.stop(closing)
        if not relays:
            return 0
        _, pending = await asyncio.wait([relay.finished for relay in relays], timeout=within)
        return len(pending)

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self._interval)
            generation = self._generation()
            now = time.time()
            if generation != self._seen or self._stale:
                self._seen, self._stale = generation, False
                due = list(self._watched.items())
            elif now >= self._next_expiry:
                due = [(r, w) for r, w in self._watched.items() if w.expires_at <= now]
            else:
                continue
            verdicts = await asyncio.gather(
                *(watched.recheck() for _, watched in due), return_exceptions=True
            )
            for (relay, _), verdict in zip(due, verdicts, strict=True):
                if isinstance(verdict, BaseException):
                    # Fail closed: a caller whose standing cannot be checked is not kept.
                    log.error("WebSocket re-check failed", exc_info=verdict)
                    relay.stop(Closing(CloseReason.INTERNAL_ERROR, "the re-check failed"))
                elif verdict is not None:
                    log.info(
                        "WebSocket closed: caller no longer admitted",
                        extra={"event": "websocket_refused", "reason": verdict.reason},
                    )
                    relay.stop(verdict)
            # Expired ones were refused just now (or renewed nothing): look
            # again at the next notAfter still ahead.
            self._next_expiry = min(
                (w.expires_at for w in self._watched.values() if w.expires_at > now),
                default=float("inf"),
            )
