"""Per-request accounting: one access-log line and the request metrics.

Handlers record what they learn on the request (``RequestFacts``); this
middleware turns it into one JSON access-log line and the counters after the
response is sent.  Never a token, a key or a full certificate: only the
client_id and the thumbprint identify the caller.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.metrics import Metrics, method_class

access_log = logging.getLogger("gateway.access")


@dataclass(slots=True)
class RequestFacts:
    """What the handlers learned about one request."""

    route: str = "-"
    client_id: str | None = None
    thumbprint: str | None = None
    upstream_status: int | None = None
    oauth_outcome: str | None = None  # token endpoint: "issued" or the RFC 6749 error code


FACTS_KEY = "gateway.facts"
TOKEN_PATHS = frozenset({"/connect/token", "/connect/mtls/token"})


def facts(request: web.Request) -> RequestFacts:
    found = request.get(FACTS_KEY)
    if isinstance(found, RequestFacts):
        return found
    created = RequestFacts()
    request[FACTS_KEY] = created
    return created


def create_observer(metrics: Metrics, listener: str, *, log_requests: bool) -> Middleware:
    in_flight = metrics.in_flight
    requests = metrics.requests
    tokens = metrics.tokens

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        in_flight.inc()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            in_flight.dec()
            info = facts(request)
            route = info.route
            if route == "-" and request.match_info.route.resource is not None:
                route = request.match_info.route.resource.canonical
            requests.labels(listener, route, method_class(request.method), str(status)).inc()
            if info.oauth_outcome is not None and route in TOKEN_PATHS:
                tokens.labels(info.client_id or "-", info.oauth_outcome).inc()
            if log_requests and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "event": "request",
                        "client_id": info.client_id,
                        "thumbprint": info.thumbprint,
                        "route": route,
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "upstream_status": info.upstream_status,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        "bytes": response.body_length if response is not None else 0,
                        "peer": request.remote,
                    },
                )

    return observe
