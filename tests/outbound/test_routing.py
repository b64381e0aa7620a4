"""Outbound route choice: longest whole-segment prefix; a Host-specific route first."""

from __future__ import annotations

import pytest

from gateway.outbound.config import OutboundRouteConfig
from gateway.outbound.routing import OutboundRouteTable, request_host


def _table() -> OutboundRouteTable[str]:
    routes = [
        ("/", None, "root"),
        ("/api", None, "api"),
        ("/api/v2/", None, "v2"),
        ("/api", "partner.example", "partner-api"),
        ("/", "other.example", "other"),
    ]
    return OutboundRouteTable(
        [(OutboundRouteConfig(p, h, "https://d.example", None), name) for p, h, name in routes]
    )


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        ("/", None, "root"),
        ("/api", None, "api"),
        ("/api/x", None, "api"),
        ("/apiary", None, "root"),
        ("/api/v2", None, "v2"),
        ("/api/v2/x", None, "v2"),
        ("/api/x", "partner.example", "partner-api"),
        ("/api/v2/x", "partner.example", "v2"),  # a longer prefix still wins
        ("/x", "partner.example", "root"),
        ("/x", "other.example", "other"),
        ("/api/x", "other.example", "api"),
    ],
)
def test_route_choice(path: str, host: str | None, expected: str) -> None:
    route = _table().find(path, host)
    assert route is not None and route.target == expected


def test_no_catch_all_means_no_route() -> None:
    table = OutboundRouteTable([(OutboundRouteConfig("/api", None, "https://d.example", None), 1)])
    assert table.find("/other", None) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("API.Partner.example", "api.partner.example"),
        ("api.partner.example:8080", "api.partner.example"),
        ("[::1]:15001", "[::1]"),
        ("127.0.0.1:15001", "127.0.0.1"),
    ],
)
def test_request_host(header: str | None, expected: str | None) -> None:
    assert request_host(header) == expected


def test_strip_prefix() -> None:
    config = OutboundRouteConfig("/orders/", None, "https://d.example", None, strip_prefix=True)
    (route,) = OutboundRouteTable([(config, None)])._routes
    assert route.destination_path("/orders/7") == "/7"
    assert route.destination_path("/orders") == "/"
