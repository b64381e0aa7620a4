"""Path forms that some upstream reads as another route's path: refused, never relayed.

The open-by-default layout of the finding: ``/`` with ``auth: none`` and
``/private`` with ``auth: client``, both to one byte-recording upstream.
Tomcat and Spring drop ``;params`` from segments, IIS and Windows drop
trailing dots and spaces, and an upstream that applies Unicode NFKC folds
U+2025 (two dot leader) into ``..`` and U+FF0F (full-width solidus) into ``/``.  Each request here
comes without a certificate, so reaching the upstream under ``/``'s policy
with a path such an upstream serves as ``/private`` is the failure.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeGateway
from tests.security.conftest import MTLS_CLIENT, RecordingUpstream
from tests.test_proxy import RawConnection


def open_layout(upstream: RecordingUpstream) -> list[dict[str, str]]:
    return [
        {"prefix": "/", "upstream": upstream.url, "auth": "none"},
        {"prefix": "/private", "upstream": upstream.url, "auth": "client"},
    ]


ATTACKS = [
    # ";" path parameters (Tomcat, Spring, Jetty).
    "/private;jsessionid=x/secret",
    "/private%3bx/secret",
    "/private%3Bx/secret",
    "/private;/secret",
    "/private;",
    # Trailing dots and spaces (IIS, Windows file systems).
    "/private./secret",
    "/private../secret",
    "/private%20/secret",
    "/private.%20./secret",
    "/private%20.%20/secret",
    "/private.",
    # Both at once (Tomcat on Windows).
    "/private.;x/secret",
    # Unicode that NFKC folds into "." or "/" (U+2024, U+2025, U+FF0E, U+FF0F, U+FE52).
    "/x/%E2%80%A5/private/secret",
    "/%E2%80%A5/private/secret",
    "/private%E2%80%A4/secret",
    "/private%EF%BC%8E/secret",
    "/x%EF%BC%8F..%EF%BC%8Fprivate/secret",
    "/%EF%BC%8Fprivate/secret",
    "/private%EF%B9%92/secret",
]


@pytest.mark.parametrize("target", ATTACKS)
async def test_path_forms_an_upstream_reads_as_private_are_refused(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, target: str
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=open_layout(recording_upstream))
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    finally:
        await conn.close()
    assert response.status == 400, response.body
    assert response.json()["error"] == "invalid_request"
    assert recording_upstream.requests == []


# Forms that stay on one route whichever way an upstream reads them: relayed.
LEGITIMATE = {
    "/files/a.": "/files/a.",  # a trailing dot in a file name under "/"
    "/files/a%20": "/files/a%20",
    "/api;v=2/cars": "/api;v=2/cars",  # matrix parameters under "/"
    "/files/caf%C3%A9": "/files/caf%C3%A9",
    "/files/wait%E2%80%A6": "/files/wait%E2%80%A6",  # U+2026 "…" folds to "...", same route
    "/privateer/x": "/privateer/x",  # not the /private prefix in any reading
}


@pytest.mark.parametrize("target", list(LEGITIMATE))
async def test_forms_that_stay_on_one_route_are_relayed(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, target: str
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=open_layout(recording_upstream))
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    finally:
        await conn.close()
    assert response.status == 200, response.body
    assert [r.target for r in recording_upstream.requests] == [LEGITIMATE[target]]


@pytest.mark.parametrize("target", ["/private/cars;color=red", "/private/report."])
async def test_forms_inside_the_private_route_keep_its_policy(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, target: str
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=open_layout(recording_upstream))
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    finally:
        await conn.close()
    assert response.status == 401, response.body
    assert recording_upstream.requests == []
