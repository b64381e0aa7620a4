"""One outbound listener, assembled from its config: TLS material, pool, tokens, routes."""

from __future__ import annotations

from pathlib import Path

from gateway.config.load import GatewayConfig
from gateway.config.reader import ConfigError
from gateway.http2.client import Http2Client
from gateway.listener.tls_material import TlsMaterialError
from gateway.outbound.client_tls import ClientTls, Trust
from gateway.outbound.config import OutboundConfig, OutboundTokenConfig
from gateway.outbound.forward_h2 import Http2Outbound
from gateway.outbound.forwarder import Forwarder, RouteTarget
from gateway.outbound.pool import OutboundPool
from gateway.outbound.routing import OutboundRouteTable
from gateway.outbound.tokens import TokenSource
from gateway.pipeline.messages import Request, Response
from gateway.upstream import UpstreamPool


class OutboundListener:
    """Raises TlsMaterialError (every bad file named) when its material cannot load."""

    def __init__(
        self,
        config: OutboundConfig,
        *,
        index: int,
        source: Path,
        upstreams: UpstreamPool | None = None,
    ) -> None:
        self.config = config
        self.index = index
        where = f"{source}:outbound[{index}]"
        tls = config.tls
        destination = Trust(tls.ca, tls.server_sha256, where=f"{where}.tls.ca")

        def token_trust(token: OutboundTokenConfig) -> Trust:
            # The authorization server is verified by its own anchors when
            # given, else the destination's; never by the destination's pins.
            if token.ca is not None:
                return Trust(token.ca, where=f"{where}.token.ca")
            return Trust(tls.ca, where=f"{where}.tls.ca")

        tokens = {r.token for r in config.routes if r.token is not None}
        self.tls = ClientTls(
            cert=tls.cert,
            key=tls.key,
            trusts=[destination, *(token_trust(t) for t in tokens)],
            min_version=tls.min_version,
            where=f"{where}.tls",
            name=f"outbound[{index}].tls",
        )
        # The gateway's upstream pool when given one (connections are kept
        # apart by TLS context anyway), else one of its own.
        self.pool = OutboundPool(self.tls, upstreams=upstreams)
        # One cache per (authorization server, client_id, scopes): routes that
        # ask for the same token share it.
        self.token_sources = {
            t: TokenSource(
                t,
                self.pool,
                token_trust(t),
                connect_timeout=config.connect_timeout,
                timeout=config.timeout,
            )
            for t in tokens
        }
        table = OutboundRouteTable(
            [
                (
                    r,
                    RouteTarget(
                        destination, self.token_sources[r.token] if r.token is not None else None
                    ),
                )
                for r in config.routes
            ]
        )
        # The app's h2c calls leave as h2 over one connection per destination.
        self.http2 = Http2Client(connect_timeout=config.connect_timeout)
        self.forwarder = Forwarder(
            table=table,
            pool=self.pool,
            connect_timeout=config.connect_timeout,
            timeout=config.timeout,
            http2=Http2Outbound(
                self.http2,
                self.pool,
                connect_timeout=config.connect_timeout,
                timeout=config.timeout,
            ),
        )

    async def handle(self, request: Request) -> Response:
        """The outbound pipeline's forward stage (server.outbound_pipeline)."""
        return await self.forwarder.handle(request)

    async def close(self) -> None:
        for source in self.token_sources.values():
            await source.close()
        await self.http2.close()
        await self.pool.close()


def build_outbound(config: GatewayConfig) -> list[OutboundListener]:
    """Every outbound listener, or ConfigError naming each unusable file."""
    problems: list[str] = []
    listeners: list[OutboundListener] = []
    for i, outbound in enumerate(config.outbound):
        try:
            listeners.append(OutboundListener(outbound, index=i, source=config.source))
        except TlsMaterialError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return listeners
