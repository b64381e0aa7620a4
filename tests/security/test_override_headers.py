"""Path- and method-override headers: the upstream never routes on what the gateway did not check.

Old IIS (URL Rewrite), Symfony, Zend, Laravel, Rails and Express middleware
honour ``X-Original-URL``, ``X-HTTP-Method-Override`` and friends: a GET to
``/public`` carrying ``X-Original-URL: /private`` is served as ``/private``.
So they are removed on every route unless the route names them in
``allow_override_headers``.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeGateway
from tests.security.conftest import MTLS_CLIENT, RecordingUpstream, two_routes
from tests.test_proxy import RawConnection

ATTACK = {
    "X-Original-URL": "/private/admin",
    "X-Rewrite-URL": "/private/admin",
    "X-Forwarded-Prefix": "/private",
    "X-HTTP-Method-Override": "DELETE",
    "X-HTTP-Method": "DELETE",
    "X-Method-Override": "DELETE",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Server": "internal.example",
    "X-Original-URI": "/private/admin",
    "X-Forwarded-URI": "/private/admin",
    "X-Forwarded-Path": "/private/admin",
    "X-Envoy-Original-Path": "/private/admin",
    "X-Forwarded-Scheme": "https",
    "X-Forwarded-Ssl": "on",
    "Front-End-Https": "on",
}


NAMES = frozenset(name.lower() for name in ATTACK)


def spellings(name: str) -> list[str]:
    return [name, name.lower(), name.upper(), name.replace("-", "_")]


def attack_head(path: str) -> str:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost"]
    for name, value in ATTACK.items():
        lines += [f"{spelling}: {value}" for spelling in spellings(name)]
    return "\r\n".join(lines) + "\r\n\r\n"


def test_the_attack_covers_every_override_header() -> None:
    from gateway.headers import OVERRIDE_HEADERS

    assert NAMES == OVERRIDE_HEADERS


async def test_override_headers_in_any_spelling_never_reach_the_upstream(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=two_routes(recording_upstream.url))
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(attack_head("/public/x"))
    finally:
        await conn.close()
    assert response.status == 200, response.body
    (relayed,) = recording_upstream.requests
    assert (relayed.method, relayed.target) == ("GET", "/public/x")
    leaked = [n for n in relayed.header_names() if n.replace("_", "-") in NAMES]
    assert leaked == []


async def test_a_route_may_let_named_override_headers_through(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream
) -> None:
    routes = two_routes(recording_upstream.url)
    routes[0]["allow_override_headers"] = ["X-Forwarded-Prefix", "x-http-method-override"]  # type: ignore[assignment]
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=routes)
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(attack_head("/public/x"))
    finally:
        await conn.close()
    assert response.status == 200, response.body
    (relayed,) = recording_upstream.requests
    kept = {n.replace("_", "-") for n in relayed.header_names()} & NAMES
    assert kept == {"x-forwarded-prefix", "x-http-method-override"}


@pytest.mark.parametrize("value", [["X-Client-Id"], ["X-Not-An-Override"], [1], {"a": 1}])
async def test_only_override_headers_can_be_allowed(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, value: object
) -> None:
    from gateway.config.reader import ConfigError

    routes = two_routes(recording_upstream.url)
    routes[0]["allow_override_headers"] = value  # type: ignore[assignment]
    with pytest.raises(ConfigError) as exc:
        await make_gateway(clients=[MTLS_CLIENT], routes=routes)
    assert any("routes[0].allow_override_headers" in p for p in exc.value.problems)
