"""The admin listener: plain HTTP on loopback, for probes and scrapes."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

ReadinessCheck = Callable[[], dict[str, bool]]


def create_admin_app(readiness: ReadinessCheck) -> web.Application:
    """``/healthz``: the process answers.  ``/readyz``: every dependency is ready."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
