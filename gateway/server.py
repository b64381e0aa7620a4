"""Running a Gateway: bind the TLS listeners and the admin port, reload, stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.admin import create_admin_app
from gateway.app import Gateway
from gateway.config import BindAddress, ConfigError
from gateway.deadlines import DeadlineSite
from gateway.observability import create_observer
from gateway.proxy_listener import ProxyProtocolSite

log = logging.getLogger("gateway")


@dataclass
class RunningGateway:
    gateway: Gateway
    runners: list[web.AppRunner] = field(default_factory=list)
    listener_addresses: list[tuple[str, int]] = field(default_factory=list)
    outbound_addresses: list[tuple[str, int]] = field(default_factory=list)
    admin_address: tuple[str, int] | None = None

    @property
    def listener_ports(self) -> list[int]:
        return [port for _, port in self.listener_addresses]

    async def stop(self, grace: float = 10.0) -> None:
        self.gateway.shutting_down = True
        for runner in self.runners:
            # Graceful: stop accepting, let in-flight requests finish up to `grace`.
            runner._shutdown_timeout = grace  # aiohttp takes it only at construction
            await runner.cleanup()
        self.runners.clear()
        await self.gateway.close()


def _bound(site: web.TCPSite) -> tuple[str, int]:
    server = site._server  # aiohttp exposes no public accessor for the bound port
    assert server is not None
    sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
    return sockname[0], sockname[1]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


async def start_gateway(gateway: Gateway, *, reuse_port: bool = False) -> RunningGateway:
    """Bind everything the config names (port 0 picks a free port)."""
    config = gateway.config
    await gateway.start()
    running = RunningGateway(gateway)
    try:
        handler_args: dict[str, Any] = {
            "max_line_size": config.limits.max_header_bytes,
            "max_field_size": config.limits.max_header_bytes,
            "max_headers": config.limits.max_headers,
            # Bodies are relayed as sent: decoding Content-Encoding here would
            # forward a decoded body under an encoded label.
            "auto_decompress": False,
        }
        for listener in gateway.listeners:
            app = gateway.listener_app(listener.index)
            runner = web.AppRunner(
                app,
                **handler_args,
                keepalive_timeout=config.limits.keepalive_timeout,
                access_log=None,
            )
            await runner.setup()
            running.runners.append(runner)
            bind = listener.config.bind
            site_options: dict[str, Any] = {
                "header_timeout": config.limits.header_read_timeout,
                "max_connections": config.limits.max_connections,
                "ssl_context": listener.tls.listening_context,
                "reuse_port": reuse_port or None,
                "backlog": 1024,
            }
            # PROXY protocol needs plain TCP first (proxy_listener.py); every
            # other listener keeps asyncio's own TLS accept path.
            site = (
                ProxyProtocolSite(
                    runner,
                    bind.host,
                    bind.port,
                    proxy_protocol=listener.config.proxy_protocol,
                    **site_options,
                )
                if listener.config.proxy_protocol is not None
                else DeadlineSite(runner, bind.host, bind.port, **site_options)
            )
            await _start_site(site, f"{config.source}:listeners[{listener.index}].bind", bind)
            host, port = _bound(site)
            listener.connections = getattr(site, "connection_limit", None)
            running.listener_addresses.append((host, port))
            if not listener.public_url:
                listener.public_url = f"https://{_url_host(bind.host)}:{port}"
        for outbound in gateway.outbound:
            # Plain HTTP on loopback (config refuses other addresses unless
            # allowed): the local app's way out, mTLS from here on.
            runner = web.AppRunner(
                # Outbound calls are counted and logged like inbound ones.
                outbound.app(
                    [
                        create_observer(
                            gateway.metrics,
                            f"outbound[{outbound.index}]",
                            access_log=gateway.access_log,
                        )
                    ]
                ),
                **handler_args,
                keepalive_timeout=config.limits.keepalive_timeout,
                access_log=None,
            )
            await runner.setup()
            running.runners.append(runner)
            bind = outbound.config.bind
            site = DeadlineSite(
                runner,
                bind.host,
                bind.port,
                header_timeout=config.limits.header_read_timeout,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
            await _start_site(site, f"{config.source}:outbound[{outbound.index}].bind", bind)
            running.outbound_addresses.append(_bound(site))
        if config.admin.bind is not None:
            running.admin_address = await _start_admin(running, config.admin.bind, reuse_port)
    except BaseException:
        await running.stop(grace=0)
        raise
    return running


async def _start_admin(
    running: RunningGateway, bind: BindAddress, reuse_port: bool
) -> tuple[str, int]:
    gateway = running.gateway
    admin_app = create_admin_app(
        gateway.readiness, gateway.metrics, allowed_hosts=gateway.config.admin.allowed_hosts
    )
    runner = web.AppRunner(admin_app, access_log=None)
    await runner.setup()
    running.runners.append(runner)
    site = web.TCPSite(runner, bind.host, bind.port, reuse_port=reuse_port or None)
    await _start_site(site, f"{running.gateway.config.source}:admin.bind", bind)
    return _bound(site)


async def _start_site(site: web.TCPSite, where: str, bind: BindAddress) -> None:
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot listen on {bind}: {exc.strerror or exc}"]) from None


async def serve_forever(
    gateway: Gateway, *, reuse_port: bool = False, grace: float | None = None
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
    for (host, port), listener in zip(running.listener_addresses, gateway.listeners, strict=True):
        log.info("listening on https://%s:%d (public %s)", host, port, listener.public_url)
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
