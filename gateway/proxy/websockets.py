"""The forward stage for WebSocket upgrades: open the upstream socket, answer 101, relay.

The caller was admitted by the same stages as any request; the relay
(gateway/websocket/) re-admits it while the socket is open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from gateway.errors import GatewayError
from gateway.pipeline.messages import ByteStream, Request, Response
from gateway.proxy.exchange import ProxyExchange
from gateway.websocket import (
    Closing,
    OpenSockets,
    WebSocketLimits,
    accept_headers,
    check_upgrade,
    connect_upstream,
    offered_protocols,
    refusal,
    relay,
)

Admit = Callable[[Request, ProxyExchange], Awaitable[tuple[tuple[str, str], ...]]]


class WebSocketStage:
    def __init__(self, limits: WebSocketLimits, sockets: OpenSockets, admit: Admit) -> None:
        self._limits = limits
        self._sockets = sockets
        self._admit = admit

    async def upgrade(self, request: Request, exchange: ProxyExchange) -> Response:
        policy, auth = exchange.policy, exchange.auth
        check_upgrade(request.headers)  # 426/400 before any upstream work (RFC 6455 §4.2.1)
        upstream = await connect_upstream(
            policy.upstream + exchange.target,
            CIMultiDict(exchange.upstream_fields()),
            protocols=offered_protocols(request.headers),
            within=policy.timeout,
            info=request.facts,
        )
        recheck = None
        if auth is not None:

            async def recheck() -> Closing | None:
                # The same decision as for the upgrade, at the registry and
                # trust state of now (on token routes the token is verified again).
                try:
                    await self._admit(request, exchange)
                except GatewayError as exc:
                    return refusal(exc)
                return None

        # The protocol always runs this once the 101 is written, even to a
        # caller already gone: its stream then reads b"" at once and the relay
        # closes the upstream with 1001.
        async def run(caller: ByteStream) -> None:
            await relay(
                caller,
                upstream,
                self._limits,
                self._sockets,
                recheck,
                admitted_at=(auth.registry_generation, auth.trust_generation) if auth else None,
                expires_at=auth.valid_until if auth else float("inf"),
            )

        return Response(101, accept_headers(request.headers, upstream), upgraded=run)
