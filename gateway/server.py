"""Running a Gateway: bind the TLS listeners and the admin port, reload, stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.admin import create_admin_app
from gateway.app import Gateway
from gateway.config import BindAddress, ConfigError, LimitsConfig
from gateway.deadlines import ConnectionLimit, HeaderDeadlineProtocol, json_error_handlers
from gateway.listener.proxy_header import ProxyRefusals
from gateway.listener.stack import ProtocolFactory, bound_address, describe, listen, tls_stack
from gateway.metrics import Metrics
from gateway.observability import AccessLog, create_observer
from gateway.outbound.listener import OutboundListener

log = logging.getLogger("gateway")

# After shutdown_timeout: how long a cancelled handler gets to unwind before its
# connection is closed under it (aiohttp's own second wait, kept short).
_CUT_SECONDS = 0.05


@dataclass
class RunningGateway:
    gateway: Gateway
    runners: list[web.AppRunner] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)
    listener_addresses: list[tuple[str, int]] = field(default_factory=list)
    outbound_addresses: list[tuple[str, int]] = field(default_factory=list)
    admin_address: tuple[str, int] | None = None

    @property
    def listener_ports(self) -> list[int]:
        return [port for _, port in self.listener_addresses]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for ``grace`` seconds, cut the rest.

        aiohttp's ``Server.shutdown(t)`` waits up to ``t`` for a handler, then
        up to ``t`` again after cancelling its request body, so a request that
        ignores the body ran to twice ``t``; and every idle keep-alive connection
        held it for the whole ``t``.  So the deadline is kept here: idle
        connections close at once (``pre_shutdown``), busy ones after their
        answer (which carries ``Connection: close``, app.py), and whatever
        still runs at ``grace`` is cancelled.
        """
        self.gateway.shutting_down = True
        for server in self.servers:
            server.close()  # stop accepting; open connections stay
        http_servers = [runner.server for runner in self.runners if runner.server]
        for http_server in http_servers:
            http_server.pre_shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                # No timeout of aiohttp's own: it returns when the handlers end.
                await asyncio.gather(*(s.shutdown(None) for s in http_servers))
        # Past the deadline: cancel the handlers still running (their upstream
        # exchanges are abandoned) and close their connections.
        await asyncio.gather(*(s.shutdown(_CUT_SECONDS) for s in http_servers))
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        self.servers.clear()
        await self.gateway.close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def http_options(limits: LimitsConfig) -> dict[str, Any]:
    """What every HTTP/1.1 connection handler is built with."""
    return {
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
        "keepalive_timeout": limits.keepalive_timeout,
        # Bodies are relayed as sent: decoding Content-Encoding here would
        # forward a decoded body under an encoded label.
        "auto_decompress": False,
        # The access log is the gateway's own (observability.py), never aiohttp's.
        "access_log": None,
    }


async def _http_runner(
    running: RunningGateway, app: web.Application, options: dict[str, Any]
) -> web.Server:
    runner = web.AppRunner(app, handle_signals=False, **{**http_options(LimitsConfig()), **options})
    await runner.setup()
    running.runners.append(runner)
    assert runner.server is not None
    return runner.server


@dataclass
class BoundOutbound:
    runner: web.AppRunner
    server: asyncio.Server
    address: tuple[str, int]

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def bind_outbound(
    outbound: OutboundListener,
    *,
    limits: LimitsConfig,
    metrics: Metrics,
    access_log: AccessLog | None,
    where: str,
    reuse_port: bool = False,
) -> BoundOutbound:
    """One outbound listener: plain HTTP on loopback in, mTLS out (gateway/outbound/).

    The observer marks request boundaries, so the header-read deadline covers
    only the wait for each request head, as on inbound listeners (without them
    a long response was cut at ``header_read_timeout``).
    """
    observer = create_observer(
        metrics, f"outbound[{outbound.index}]", access_log=access_log, request_boundaries=True
    )
    options = http_options(limits)
    runner = web.AppRunner(outbound.app([observer]), handle_signals=False, **options)
    await runner.setup()
    assert runner.server is not None
    handlers = json_error_handlers(runner.server, options)

    def plain_http() -> asyncio.Protocol:
        return HeaderDeadlineProtocol(handlers(), limits.header_read_timeout)

    try:
        server = await listen(plain_http, outbound.config.bind, reuse_port=reuse_port)
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            [f"{where}: cannot listen on {outbound.config.bind}: {exc.strerror or exc}"]
        ) from None
    return BoundOutbound(runner, server, bound_address(server))


async def start_gateway(gateway: Gateway, *, reuse_port: bool = False) -> RunningGateway:
    """Bind everything the config names (port 0 picks a free port)."""
    config = gateway.config
    limits = config.limits
    await gateway.start()
    running = RunningGateway(gateway)
    try:
        options = http_options(limits)
        for listener in gateway.listeners:
            for line in listener.tls.material.ignored_pins:
                log.warning("%s", line)  # `check` prints the same lines as warnings
            server = await _http_runner(running, gateway.listener_app(listener.index), options)
            gate = ConnectionLimit(limits.max_connections) if limits.max_connections else None
            listener.connections = gate
            handlers = json_error_handlers(server, options)
            timeout = limits.header_read_timeout

            def http(
                handlers: Callable[[], asyncio.Protocol] = handlers,
                gate: ConnectionLimit | None = gate,
                timeout: float = timeout,
            ) -> asyncio.Protocol:
                return HeaderDeadlineProtocol(handlers(), timeout, gate=gate)

            listener.proxy_refusals = ProxyRefusals()
            factory = tls_stack(
                listener.tls,
                http,
                handshake_timeout=timeout,
                send_timeout=limits.send_timeout,
                proxy_protocol=listener.config.proxy_protocol,
                proxy_refusals=listener.proxy_refusals,
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
            )
            running.runners.append(bound_outbound.runner)
            running.servers.append(bound_outbound.server)
            running.outbound_addresses.append(bound_outbound.address)
        if config.admin.bind is not None:
            admin = create_admin_app(
                gateway.readiness, gateway.metrics, allowed_hosts=config.admin.allowed_hosts
            )
            server = await _http_runner(running, admin, {})
            where = f"{config.source}:admin.bind"
            running.admin_address = await _listen(
                running, server, where, config.admin.bind, reuse_port
            )
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
    for (host, port), listener in zip(running.listener_addresses, gateway.listeners, strict=True):
        log.info(
            "listening on https://%s:%d (public %s): %s",
            host,
            port,
            listener.public_url,
            describe(listener.config.proxy_protocol, "http/1.1"),
        )
    for host, port in running.outbound_addresses:
        log.info("outbound on http://%s:%d", host, port)
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
