"""The admin listener: plain HTTP on loopback, for probes and scrapes."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.metrics import CONTENT_TYPE, Metrics

ReadinessCheck = Callable[[], dict[str, bool]]


def create_admin_app(readiness: ReadinessCheck, metrics: Metrics | None = None) -> web.Application:
    """``/healthz``: the process answers.  ``/readyz``: every dependency is ready.
    ``/metrics``: Prometheus text format."""

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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_text)
    return app
