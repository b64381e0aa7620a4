"""``Expect: 100-continue`` over real TLS: the interim 100 only once the policy accepted.

A ``100 Continue`` tells the caller its request will be accepted (RFC 9110
§10.1.1) and invites the body: one sent before authentication would make a
refused caller upload for nothing.  aiohttp sent it before any handler ran.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import MakeGateway
from tests.pki import Issued, Pki
from tests.security.conftest import MTLS_CLIENT
from tests.test_proxy import RawConnection

BODY = b"hello"
HEAD = (
    "POST /upload HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n"
)


@pytest.fixture(scope="module")
def stranger(pki: Pki) -> Issued:
    """Issued by the trusted CA, but registered nowhere."""
    return pki.client("stranger")


@pytest.mark.parametrize(
    ("who", "status", "error"),
    [(None, 401, "client_certificate_required"), ("stranger", 403, "access_denied")],
)
async def test_a_refused_caller_never_sees_100_continue(
    make_gateway: MakeGateway, stranger: Issued, who: str | None, status: int, error: str
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, stranger if who else None)
    await caller.send(HEAD)  # and waits for the 100 before sending the body
    response = await caller.read_response()
    assert response.status == status  # the first thing on the wire: no 100 before it
    assert response.json()["error"] == error
    # The unsent body would be read as the next request: the connection is
    # not reused (aiohttp lingers a little reading what arrives, RFC 9112 §9.6).
    assert response.headers["Connection"] == "close"
    await caller.close()


async def test_an_accepted_caller_sees_100_continue_then_the_answer(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, client_cert)
    await caller.send(HEAD)
    async with asyncio.timeout(5):
        interim = await caller.reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await caller.send("", BODY)
    response = await caller.read_response()
    await caller.close()
    assert response.status == 200
    assert response.json()["body_bytes"] == len(BODY)


async def test_an_unknown_expectation_is_refused_with_417(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    caller = await RawConnection.open(gw, client_cert)
    response = await caller.request(HEAD.replace("100-continue", "something-else"))
    await caller.close()
    assert response.status == 417
    assert response.json()["error"] == "expectation_failed"
