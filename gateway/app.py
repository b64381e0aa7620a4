"""Assembly: one Gateway (shared state) and one request pipeline per listener.

Dependencies are built once and passed in (``build_gateway``), so tests and
``check`` construct exactly what ``serve`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.auth import Authenticator
from gateway.config.load import GatewayConfig
from gateway.config.reader import ConfigError
from gateway.config_reload import ConfigReloader
from gateway.framing import check_framing
from gateway.headers import managed_header_keys
from gateway.http2.client import Http2Client
from gateway.lifecycle import FileWatcher
from gateway.listener.config import ListenerConfig
from gateway.listener.connection_limit import ConnectionLimit
from gateway.listener.proxy_header import ProxyRefusals
from gateway.listener.tls_context import ALPN_PROTOCOLS, ALPN_WITH_HTTP2
from gateway.listener.tls_material import ListenerTls, TlsMaterialError
from gateway.ops.metrics import MULTIPROC_ENV, Metrics, create_metrics
from gateway.ops.observability import AccessLog
from gateway.ops.state_metrics import GatewayStateCollector
from gateway.ops.worker_metrics import SYNC_SECONDS, CountersInMetrics
from gateway.pipeline.chain import Pipeline, Stage
from gateway.pipeline.endpoints import Endpoints
from gateway.pipeline.messages import Handler
from gateway.proxy.stages import Proxy
from gateway.proxy.tokens import TokenChecker
from gateway.registry.base import Registry
from gateway.registry.factory import create_registry
from gateway.upstream import UpstreamPool

if TYPE_CHECKING:
    from gateway.outbound.listener import OutboundListener

log = logging.getLogger("gateway")

# Hooks the token service registers: the gateway's own endpoints on a listener
# (path → handler), answered before any route is looked up.
ListenerExtension = Callable[["ListenerContext", "Gateway"], dict[str, Handler]]


@dataclass
class ListenerContext:
    """Everything one listener's handlers need."""

    index: int
    config: ListenerConfig
    tls: ListenerTls
    authenticator: Authenticator
    public_url: str = ""  # resolved once bound
    connections: ConnectionLimit | None = None  # the bound listener's counters, for /metrics
    proxy_refusals: ProxyRefusals | None = None  # connections refused before TLS (PROXY protocol)


@dataclass
class Gateway:
    config: GatewayConfig
    registry: Registry
    listeners: list[ListenerContext]
    extensions: list[ListenerExtension] = field(default_factory=list)
    token_checker: TokenChecker | None = None
    # Every Reloadable part (config, listener TLS, registry, signing keys,
    # outbound TLS): polled by one task, all reloaded on SIGHUP, counted in /metrics.
    watcher: FileWatcher = field(default_factory=FileWatcher)
    metrics: Metrics = field(default_factory=create_metrics)
    access_log: AccessLog | None = None
    upstreams: UpstreamPool | None = None  # every other proxied request
    http2_upstreams: Http2Client | None = None  # routes with upstream_protocol h2c | h2
    # Plain-HTTP listeners for the local app's outgoing calls (gateway/outbound/);
    # server.py binds them, close() releases their pools.
    outbound: list[OutboundListener] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    config_reloader: ConfigReloader | None = None
    shutting_down: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        # The proxy's own pooled HTTP/1.1 client (gateway/upstream.py): aiohttp's
        # client cost ~46 of the 130 µs of CPU per request (bench/RESULTS.md).
        self.upstreams = UpstreamPool(max_idle=self.config.limits.upstream_idle_connections)
        self.http2_upstreams = Http2Client()
        await self.registry.start()
        self._tasks.append(asyncio.create_task(self._watch_files(), name="file-watch"))
        if os.environ.get(MULTIPROC_ENV):
            # Workers that are not scraped publish their counters each second.
            self._tasks.append(asyncio.create_task(self._sync_metrics(), name="metrics-sync"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # A worker that stops publishes what it counted since the last second.
        self.metrics.sync()
        for outbound in self.outbound:
            await outbound.close()
        await self.registry.close()
        if self.access_log is not None:
            self.access_log.flush()
        if self.upstreams is not None:
            await self.upstreams.close()
        if self.http2_upstreams is not None:
            await self.http2_upstreams.close()

    async def _sync_metrics(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            self.metrics.sync()

    async def _watch_files(self) -> None:
        await self.watcher.watch()

    async def reload(self) -> bool:
        """SIGHUP: re-read every file now; each part keeps its state if it fails."""
        return self.watcher.reload_all()

    def readiness(self) -> dict[str, bool]:
        return {"registry": self.registry.ready, "accepting": not self.shutting_down}

    def listener_pipeline(self, index: int) -> Pipeline:
        """The chain of stages every request on this listener runs through (logged at start)."""
        listener = self.listeners[index]
        assert self.upstreams is not None, "start() the gateway first"
        endpoints: dict[str, Handler] = {}
        for extend in self.extensions:
            endpoints.update(extend(listener, self))
        proxy = Proxy(
            routes=self.config.routes,
            authenticator=listener.authenticator,
            upstreams=self.upstreams,
            managed_headers=managed_header_keys(self.config.headers),
            limits=self.config.limits,
            token_checker=self.token_checker,
            metrics=self.metrics,
            http2_upstreams=self.http2_upstreams,
        )
        self.proxies.append(proxy)
        stages = [Stage.of("framing", check_framing)]
        # Listeners behind a TLS-terminating proxy log forwarded-certificate
        # headers from anyone else; the others carry no extra stage.
        watch = listener.authenticator.forwarded_header_watch()
        if watch is not None:
            stages.append(Stage.of("forwarded-header watch", watch))
        if endpoints:
            stages.append(Stage.of("endpoints", Endpoints(endpoints).dispatch))
        return Pipeline([*stages, *proxy.stages()])


def build_gateway(config: GatewayConfig) -> Gateway:
    """Load every file the config names; ConfigError lists all problems."""
    problems: list[str] = []
    listeners: list[ListenerContext] = []
    registry: Registry | None = None
    try:
        registry = create_registry(config.registry)
    except ConfigError as exc:
        problems += exc.problems
    tls_list: list[ListenerTls] = []
    for i, listener in enumerate(config.listeners):
        try:
            alpn = ALPN_WITH_HTTP2 if listener.http2 else ALPN_PROTOCOLS
            where = f"{config.source}:listeners[{i}].tls"
            tls_list.append(ListenerTls(listener.tls, where, name=f"tls:listeners[{i}]", alpn=alpn))
        except TlsMaterialError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    assert registry is not None
    metrics = create_metrics(client_labels=config.admin.metrics_client_labels)
    for tls in tls_list:
        tls.handshakes.count_failures_in(metrics.tls_handshake_failures)
    for i, (listener, tls) in enumerate(zip(config.listeners, tls_list, strict=True)):
        listeners.append(
            ListenerContext(
                index=i,
                config=listener,
                tls=tls,
                authenticator=Authenticator(
                    registry,
                    tls,
                    config.headers,
                    metrics,
                    forwarded=listener.forwarded_client_cert,
                ),
                public_url=listener.public_url or "",
            )
        )
    access_log = AccessLog(fmt=config.logging.format) if config.logging.access_log else None
    gateway = Gateway(
        config=config,
        registry=registry,
        listeners=listeners,
        metrics=metrics,
        access_log=access_log,
    )
    gateway.config_reloader = ConfigReloader(gateway)
    for part in (gateway.config_reloader, *tls_list, registry):
        gateway.watcher.add(part)
    metrics.add_state(GatewayStateCollector(gateway))
    counters = CountersInMetrics(
        gateway, metrics.registry, multiproc=bool(os.environ.get(MULTIPROC_ENV))
    )
    metrics.syncs.append(counters.sync)
    return gateway
