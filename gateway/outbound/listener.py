"""One outbound listener, assembled from its config: TLS material, pool, tokens, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from gateway.config import ConfigError, GatewayConfig, OutboundConfig, OutboundTokenConfig
from gateway.observability import CountingResponse, facts
from gateway.outbound.client_tls import ClientTls, Trust
from gateway.outbound.forwarder import Forwarder, RouteTarget
from gateway.outbound.pool import OutboundPool
from gateway.outbound.routing import OutboundRouteTable
from gateway.outbound.tokens import TokenSource
from gateway.pipeline.messages import Request, RequestBody, Response
from gateway.tls import TlsMaterialError
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
        self.forwarder = Forwarder(
            table=table,
            pool=self.pool,
            connect_timeout=config.connect_timeout,
            timeout=config.timeout,
        )

    def app(self, middlewares: Sequence[Middleware] = ()) -> web.Application:
        # TEMPORARY: until the gateway's own HTTP/1.1 protocol serves outbound
        # listeners, aiohttp does, through the adapter below.  Deleted when
        # that protocol hands its Requests to self.forwarder.handle directly.
        app = web.Application(middlewares=list(middlewares))
        app.router.add_route("*", "/{tail:.*}", self._serve_aiohttp)
        return app

    async def _serve_aiohttp(self, incoming: web.Request) -> web.StreamResponse:
        """TEMPORARY (see ``app``): an aiohttp request through the forwarder, and back."""
        flowing = asyncio.Event()
        flowing.set()
        body = RequestBody(pause=flowing.clear, resume=flowing.set)
        feeder = asyncio.get_running_loop().create_task(_feed(incoming, body, flowing))
        request = Request(
            method=incoming.method,
            raw_path=incoming.raw_path,
            path=incoming.path,
            query_string=incoming.raw_path.partition("?")[2],
            headers=CIMultiDict(incoming.headers),
            version=(incoming.version.major, incoming.version.minor),
            remote=incoming.remote or "",
            scheme="http",
            transport=incoming.transport,
            content=body,
            body_exists=incoming.body_exists,
        )
        try:
            response = await self.forwarder.handle(request)
            return await _write(incoming, response)
        finally:
            feeder.cancel()
            info, learned = facts(incoming), request.facts
            info.route = learned.route
            info.upstream_status = learned.upstream_status
            info.upstream_error = learned.upstream_error

    def reload_if_changed(self) -> bool:
        """Polled every second and run on SIGHUP (``Gateway.reloaders``)."""
        return self.tls.reload_if_changed()

    async def close(self) -> None:
        for source in self.token_sources.values():
            await source.close()
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


async def _feed(incoming: web.Request, body: RequestBody, flowing: asyncio.Event) -> None:
    """TEMPORARY (see ``OutboundListener.app``): aiohttp's body stream into a RequestBody."""
    try:
        while chunk := await incoming.content.readany():
            body.feed(chunk)
            await flowing.wait()  # cleared by RequestBody past its high-water mark
        body.end()
    except Exception as exc:
        body.fail(exc)


async def _write(incoming: web.Request, response: Response) -> web.StreamResponse:
    """TEMPORARY (see ``OutboundListener.app``): a pipeline Response written by aiohttp."""
    out = CountingResponse(status=response.status, reason=response.reason or None)
    out.headers.extend(response.headers)
    stream = response.stream
    if stream is None:
        out.content_length = (
            response.length
            if incoming.method == "HEAD" and response.length is not None
            else len(response.body)
        )
        await out.prepare(incoming)
        await out.write_eof(response.body)
        return out
    if response.length is not None:
        out.content_length = response.length
    try:
        await out.prepare(incoming)
        try:
            async for chunk in stream:
                if chunk:  # an empty one asks for the head, which prepare() sent
                    await out.write(chunk)
        except Exception:
            # The head is gone already: cutting the connection is the only
            # way left to tell the app the body is incomplete.
            if incoming.transport is not None:
                incoming.transport.abort()
            return out
        await out.write_eof()
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    return out
