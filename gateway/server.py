"""Running a Gateway: bind the TLS listeners and the admin port, reload, stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.app import Gateway
from gateway.config.reader import ConfigError
from gateway.config.values import BindAddress
from gateway.framing import check_framing
from gateway.http1.connections import ConnectionSet
from gateway.http1.reader import Http1Settings
from gateway.http1.server import Http1ServerProtocol
from gateway.http2.limits import Http2Limits
from gateway.http2.prior_knowledge import PrefaceSniffer
from gateway.http2.server import Http2ServerProtocol
from gateway.listener.config import LimitsConfig
from gateway.listener.connection_limit import ConnectionLimit
from gateway.listener.proxy_header import ProxyRefusals
from gateway.listener.stack import ProtocolFactory, bound_address, describe, listen, tls_stack
from gateway.ops.admin import create_admin_app
from gateway.ops.heap import HeapTrimmer
from gateway.ops.metrics import Metrics
from gateway.ops.observability import AccessLog, Observer
from gateway.outbound.listener import OutboundListener
from gateway.pipeline.chain import Pipeline, Stage

log = logging.getLogger("gateway")


@dataclass
class RunningGateway:
    gateway: Gateway
    runners: list[web.AppRunner] = field(default_factory=list)  # the admin app
    servers: list[asyncio.Server] = field(default_factory=list)
    connections: ConnectionSet = field(default_factory=ConnectionSet)
    listener_addresses: list[tuple[str, int]] = field(default_factory=list)
    outbound_addresses: list[tuple[str, int]] = field(default_factory=list)
    pipelines: list[Pipeline] = field(default_factory=list)
    admin_address: tuple[str, int] | None = None
    heap: HeapTrimmer | None = None  # malloc_trim after connection bursts (ops/heap.py)

    @property
    def listener_ports(self) -> list[int]:
        return [port for _, port in self.listener_addresses]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for ``grace`` seconds, cut the rest.

        Idle keep-alive connections close at once, busy ones after their
        answer (which carries ``Connection: close``), and whatever still runs
        at ``grace`` is cancelled and its connection aborted: the deadline is
        ``grace``, not a multiple of it.
        """
        self.gateway.shutting_down = True
        for server in self.servers:
            server.close()  # stop accepting; open connections stay
        # Open WebSockets get a 1001 close frame at both ends (RFC 6455 §7.4.1),
        # within the grace period; then the connections drain or are cut.
        started = asyncio.get_running_loop().time()
        await asyncio.gather(
            *(proxy.sockets.close_all(within=grace) for proxy in self.gateway.proxies)
        )
        spent = asyncio.get_running_loop().time() - started
        await self.connections.wait_closed(max(grace - spent, 0))
        if self.heap is not None:
            await self.heap.stop()
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        self.servers.clear()
        await self.gateway.close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def http1_settings(limits: LimitsConfig, *, scheme: str, plain: bool = False) -> Http1Settings:
    """What every HTTP/1.1 connection of a listener is built with."""
    return Http1Settings(
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        header_read_timeout=limits.header_read_timeout,
        keepalive_timeout=limits.keepalive_timeout,
        # On TLS listeners the TLS layer bounds a stalled write; plain ones here.
        send_timeout=limits.send_timeout if plain else None,
        scheme=scheme,
    )


def http1_factory(
    pipeline: Pipeline,
    settings: Http1Settings,
    *,
    observer: Observer,
    connections: ConnectionSet,
    draining: Callable[[], bool],
    gate: ConnectionLimit | None = None,
) -> ProtocolFactory:
    def http1() -> asyncio.Protocol:
        return Http1ServerProtocol(
            pipeline,
            settings,
            observer=observer,
            connections=connections,
            draining=draining,
            admit=gate.admit if gate is not None else None,
            release=gate.release if gate is not None else None,
        )

    return http1


def http2_factory(
    pipeline: Pipeline,
    limits: LimitsConfig,
    *,
    scheme: str = "https",
    observer: Observer,
    connections: ConnectionSet,
    draining: Callable[[], bool],
    gate: ConnectionLimit | None = None,
) -> ProtocolFactory:
    """Connections whose ALPN chose h2 (listeners[].http2): the same pipeline, per stream."""
    # A connection without streams waits as long as an idle HTTP/1.1 one.
    settings = Http2Limits(idle_timeout=limits.keepalive_timeout)

    def http2() -> asyncio.Protocol:
        return Http2ServerProtocol(
            pipeline,
            limits=settings,
            scheme=scheme,
            observer=observer,
            connections=connections,
            draining=draining,
            admit=gate.admit if gate is not None else None,
            release=gate.release if gate is not None else None,
        )

    return http2


@dataclass
class BoundOutbound:
    server: asyncio.Server
    address: tuple[str, int]
    pipeline: Pipeline
    connections: ConnectionSet

    async def close(self) -> None:
        self.server.close()
        await self.connections.wait_closed(0)


def outbound_pipeline(outbound: OutboundListener) -> Pipeline:
    return Pipeline([Stage.of("framing", check_framing), Stage.of("forward", outbound.handle)])


async def bind_outbound(
    outbound: OutboundListener,
    *,
    limits: LimitsConfig,
    metrics: Metrics,
    access_log: AccessLog | None,
    where: str,
    reuse_port: bool = False,
    connections: ConnectionSet | None = None,
    draining: Callable[[], bool] = lambda: False,
) -> BoundOutbound:
    """One outbound listener: plain HTTP on loopback in, mTLS out (gateway/outbound/).

    The same HTTP/1.1 protocol as inbound listeners, so the header-read
    deadline covers only the wait for each request head (an outbound
    listener built without it cut long responses at ``header_read_timeout``).
    """
    observer = Observer(metrics, f"outbound[{outbound.index}]", access_log=access_log)
    pipeline = outbound_pipeline(outbound)
    connections = connections if connections is not None else ConnectionSet()
    http1 = http1_factory(
        pipeline,
        http1_settings(limits, scheme="http", plain=True),
        observer=observer,
        connections=connections,
        draining=draining,
    )
    # gRPC clients speak h2c with prior knowledge (RFC 9113 §3.3): the preface tells.
    http2 = http2_factory(
        pipeline,
        limits,
        scheme="http",
        observer=observer,
        connections=connections,
        draining=draining,
    )
    factory = lambda: PrefaceSniffer(http1, http2)  # noqa: E731
    try:
        server = await listen(factory, outbound.config.bind, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(
            [f"{where}: cannot listen on {outbound.config.bind}: {exc.strerror or exc}"]
        ) from None
    return BoundOutbound(server, bound_address(server), pipeline, connections)


async def start_gateway(gateway: Gateway, *, reuse_port: bool = False) -> RunningGateway:
    """Bind everything the config names (port 0 picks a free port)."""
    config = gateway.config
    limits = config.limits
    await gateway.start()
    running = RunningGateway(gateway)
    try:
        # A C-level callable, not a lambda: every answer asks it.
        draining = functools.partial(getattr, gateway, "shutting_down")
        for listener in gateway.listeners:
            for line in listener.tls.material.ignored_pins:
                log.warning("%s", line)  # `check` prints the same lines as warnings
            pipeline = gateway.listener_pipeline(listener.index)
            running.pipelines.append(pipeline)
            gate = ConnectionLimit(limits.max_connections) if limits.max_connections else None
            listener.connections = gate
            observer = Observer(gateway.metrics, str(listener.index), access_log=gateway.access_log)
            http = http1_factory(
                pipeline,
                http1_settings(limits, scheme="https"),
                observer=observer,
                connections=running.connections,
                draining=draining,
                gate=gate,
            )
            http2 = None
            if listener.config.http2:
                http2 = http2_factory(
                    pipeline,
                    limits,
                    observer=observer,
                    connections=running.connections,
                    draining=draining,
                    gate=gate,
                )
            listener.proxy_refusals = ProxyRefusals()
            factory = tls_stack(
                listener.tls,
                http,
                handshake_timeout=limits.header_read_timeout,
                send_timeout=limits.send_timeout,
                proxy_protocol=listener.config.proxy_protocol,
                proxy_refusals=listener.proxy_refusals,
                http2=http2,
            )
            where = f"{config.source}:listeners[{listener.index}].bind"
            bound = await _listen(running, factory, where, listener.config.bind, reuse_port)
            running.listener_addresses.append(bound)
            if not listener.public_url:
                listener.public_url = f"https://{_url_host(listener.config.bind.host)}:{bound[1]}"
        for outbound in gateway.outbound:
            bound_outbound = await bind_outbound(
                outbound,
                limits=limits,
                metrics=gateway.metrics,
                access_log=gateway.access_log,
                where=f"{config.source}:outbound[{outbound.index}].bind",
                reuse_port=reuse_port,
                connections=running.connections,
                draining=draining,
            )
            running.servers.append(bound_outbound.server)
            running.outbound_addresses.append(bound_outbound.address)
            running.pipelines.append(bound_outbound.pipeline)
        if config.admin.bind is not None:
            admin = create_admin_app(
                gateway.readiness, gateway.metrics, allowed_hosts=config.admin.allowed_hosts
            )
            runner = web.AppRunner(admin, handle_signals=False, access_log=None)
            await runner.setup()
            running.runners.append(runner)
            assert runner.server is not None
            where = f"{config.source}:admin.bind"
            running.admin_address = await _listen(
                running, runner.server, where, config.admin.bind, reuse_port
            )
        connections = running.connections
        running.heap = HeapTrimmer(lambda: len(connections), peak=connections.take_peak)
        running.heap.start()
    except BaseException:
        await running.stop(grace=0)
        raise
    return running


async def _listen(
    running: RunningGateway,
    factory: ProtocolFactory,
    where: str,
    bind: BindAddress,
    reuse_port: bool,
) -> tuple[str, int]:
    try:
        server = await listen(factory, bind, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot listen on {bind}: {exc.strerror or exc}"]) from None
    running.servers.append(server)
    return bound_address(server)


async def serve_forever(
    gateway: Gateway,
    *,
    reuse_port: bool = False,
    grace: float | None = None,
    lifeline: int | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads every file.

    Shutdown is graceful: /readyz fails at once, the listeners keep accepting
    for ``limits.drain_delay`` (load balancers stop sending), then close, and
    in-flight requests get ``limits.shutdown_timeout`` (or ``grace``) to finish.
    """
    limits = gateway.config.limits
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running = await start_gateway(gateway, reuse_port=reuse_port)
    # Everything loaded at start-up (modules, config, keys, registry) lives for
    # the whole process: move it out of the collector's sight, so the
    # collections that request garbage triggers do not walk it every time.
    gc.collect()
    gc.freeze()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # A supervisor forks workers with these blocked (supervisor.py): one that
    # arrived during start-up is delivered now, to the handlers above.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
    if lifeline is not None:

        def supervisor_gone() -> None:
            loop.remove_reader(lifeline)
            log.warning("the supervisor is gone: shutting down")
            stop.set()

        loop.add_reader(lifeline, supervisor_gone)
    listening = zip(running.listener_addresses, gateway.listeners, running.pipelines, strict=False)
    for (host, port), listener, pipeline in listening:
        log.info(
            "listening on https://%s:%d (public %s): %s; pipeline %s",
            host,
            port,
            listener.public_url,
            describe(
                listener.config.proxy_protocol,
                "h2 | http/1.1" if listener.config.http2 else "http/1.1",
            ),
            pipeline.describe(),
        )
    outbound_pipelines = running.pipelines[len(gateway.listeners) :]
    for (host, port), pipeline in zip(running.outbound_addresses, outbound_pipelines, strict=False):
        log.info("outbound on http://%s:%d: pipeline %s", host, port, pipeline.describe())
    if running.admin_address:
        log.info("admin on http://%s:%d", *running.admin_address)
    try:
        await stop.wait()
        gateway.shutting_down = True
        log.info("shutting down: draining for %.1f s", limits.drain_delay)
        await asyncio.sleep(limits.drain_delay)
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await running.stop(grace=limits.shutdown_timeout if grace is None else grace)
        log.info("stopped")
