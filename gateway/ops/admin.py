"""The admin listener: plain HTTP on loopback, for probes and scrapes."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import NO_STORE
from gateway.ops.metrics import CONTENT_TYPE, Metrics

ReadinessCheck = Callable[[], dict[str, bool]]
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _host_name(host: str) -> str:
    """The name part of a Host value, lowercased, without port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """May a request with this Host read the admin port?

    DNS rebinding: a web page re-points its own name at 127.0.0.1 and, being
    same-origin, reads the answers; its Host still names the attacker's
    domain.  So only loopback names, IP literals (no name to rebind: kubelet
    probes and Prometheus use the pod IP) and the configured names are
    answered.  No Host at all (HTTP/1.0 tools) is no browser.
    """
    if host is None:
        return True
    name = _host_name(host).rstrip(".")
    if name in LOOPBACK_NAMES or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def create_admin_app(
    readiness: ReadinessCheck,
    metrics: Metrics | None = None,
    *,
    allowed_hosts: Iterable[str] = (),
) -> web.Application:
    """``/healthz``: the process answers.  ``/readyz``: every dependency is ready.
    ``/metrics``: Prometheus text format.  Only for the Hosts ``host_allowed`` admits."""
    allowed = frozenset(allowed_hosts)

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), allowed):
            return web.json_response(
                {
                    "error": "access_denied",
                    "error_description": "this Host is not served on the admin port "
                    "(admin.allowed_hosts)",
                },
                status=403,
                headers=NO_STORE,
            )
        return await handler(request)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def metrics_text(_: web.Request) -> web.Response:
        assert metrics is not None
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[check_host])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_text)
    return app
