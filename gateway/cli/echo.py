"""A built-in echo upstream: answers every request with what it received, as JSON.

Used by ``quickstart`` (so the first run needs no application of its own) and
by the tests as the real upstream behind the gateway.
"""

from __future__ import annotations

import hashlib

from aiohttp import WSMsgType, web


async def _echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse(protocols=("echo",))
        await ws.prepare(request)
        # Name/value pairs, as for HTTP: dict() would keep one value per name
        # and hide a second (e.g. caller-spoofed) copy of an identity header.
        await ws.send_json({"headers": [[k, v] for k, v in request.headers.items()]})
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
    size = 0
    digest = hashlib.sha256()
    async for chunk in request.content.iter_any():
        size += len(chunk)
        digest.update(chunk)
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
        }
    )


def create_echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
