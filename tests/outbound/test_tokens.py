"""Token acquisition: discovery, caching, single-flight refresh, failures as 502 JSON.

Token requests are counted by the stand-in partner as it answers them: real
HTTP calls over real mTLS, not the gateway's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port
from tests.outbound.conftest import (
    Partner,
    StartOutbound,
    outbound_config,
    token_settings,
    x5t_s256,
)
from tests.pki import Issued, Pki


async def _get(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        return response.status, await response.json()


async def _concurrently(url: str, n: int) -> list[tuple[int, dict[str, Any]]]:
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, dict[str, Any]]:
            async with session.get(url) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one() for _ in range(n)))


async def test_token_is_obtained_once_and_bound_to_the_presented_certificate(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
        )
    )
    for _ in range(3):
        status, body = await _get(running.url + "/api/x")
        assert status == 200, body
    assert partner.token_calls == {"/token": 1}
    (authorization,) = body["authorization"]
    token = authorization.removeprefix("Bearer ")
    assert partner.bound[token] == x5t_s256(client_cert.der) == body["peer_x5t"]
    assert token.endswith("-mtls.client-api1")  # client_id and scope as configured


async def test_discovery_prefers_the_mtls_alias(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner, issuer=True),
        )
    )
    status, _ = await _get(running.url + "/api/x")
    assert status == 200
    assert partner.token_calls == {"/mtls/token": 1}  # RFC 8705 §5, not the plain endpoint


async def test_discovery_for_another_issuer_is_refused(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    partner.issuer = "https://evil.example"
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner, issuer=True),
        )
    )
    status, body = await _get(running.url + "/api/x")
    assert status == 502
    assert body["error"] == "token_unavailable"
    assert "issuer 'https://evil.example'" in body["error_description"]
    assert partner.tokens_issued == 0 and partner.api_calls == 0


async def test_refresh_before_expiry_under_concurrent_requests_makes_one_token_request(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    """Past 80 % of the lifetime: the valid token keeps being sent while ONE refresh runs."""
    partner.lifetime = 3  # refresh at 2.4 s, still sent until 2.7 s
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
        )
    )
    status, body = await _get(running.url + "/api/x")
    assert status == 200
    first = body["authorization"]
    partner.delay = 0.2  # the refresh overlaps with every request below
    await asyncio.sleep(2.45)
    results = await _concurrently(running.url + "/api/x", 25)
    assert all(status == 200 for status, _ in results)
    assert all(body["authorization"] == first for _, body in results), "old token, still valid"
    await asyncio.sleep(0.3)  # the refresh has landed
    status, body = await _get(running.url + "/api/x")
    assert body["authorization"] != first
    assert partner.token_calls == {"/token": 2}, "exactly one refresh for 25 concurrent requests"


async def test_expired_token_makes_concurrent_requests_wait_for_one_refresh(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    partner.lifetime = 1
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
        )
    )
    _, body = await _get(running.url + "/api/x")
    first = body["authorization"]
    await asyncio.sleep(1.1)
    partner.delay = 0.2
    results = await _concurrently(running.url + "/api/x", 25)
    tokens = {tuple(body["authorization"]) for _, body in results}
    assert len(tokens) == 1 and tuple(first) not in tokens, "every request waited for the new one"
    assert partner.token_calls == {"/token": 2}


async def test_token_endpoint_down_gives_502_json_naming_the_cause(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    dead = f"https://localhost:{free_port()}/connect/token"
    token = token_settings(partner)
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=type(token)(dead, None, token.client_id, token.scopes),
        )
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(running.url + "/api/x") as response,
    ):
        assert response.status == 502
        assert response.content_type == "application/json"
        body = await response.json()
    assert body == {"error": "token_unavailable", "error_description": f"cannot connect to {dead}"}
    assert partner.api_calls == 0, "nothing is sent without the token"


async def test_token_endpoint_error_is_named_and_not_retried_at_once(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    partner.fail = (401, {"error": "invalid_client", "error_description": "unknown certificate"})
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
        )
    )
    results = await _concurrently(running.url + "/api/x", 5)
    results.append(await _get(running.url + "/api/x"))
    for status, body in results:
        assert status == 502
        assert body["error_description"] == (
            f"invalid_client from {partner.url}/token: unknown certificate"
        )
    assert partner.tokens_issued == 1, "a failing endpoint is not hammered"
    partner.fail = None
    await asyncio.sleep(1.05)  # past the back-off
    status, _ = await _get(running.url + "/api/x")
    assert status == 200


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ({"token_type": "Bearer"}, "no access_token"),
        ({"access_token": "t", "token_type": "DPoP"}, "token_type 'DPoP'"),
        ({"access_token": "t", "token_type": "bearer", "expires_in": "soon"}, "expires_in"),
    ],
)
async def test_malformed_token_answers_are_refused(
    pki: Pki,
    client_cert: Issued,
    partner: Partner,
    start_outbound: StartOutbound,
    answer: dict[str, Any],
    fragment: str,
) -> None:
    partner.fail = (200, answer)
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
        )
    )
    status, body = await _get(running.url + "/api/x")
    assert status == 502 and fragment in body["error_description"]


async def test_the_token_is_never_logged(
    pki: Pki,
    client_cert: Issued,
    partner: Partner,
    start_outbound: StartOutbound,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            token=token_settings(partner),
        )
    )
    _, body = await _get(running.url + "/api/x")
    partner.revoked.add(body["authorization"][0].removeprefix("Bearer "))
    status, _ = await _get(running.url + "/api/protected")  # refused, refreshed, retried
    assert status == 200
    assert partner.tokens_issued == 2
    assert any(r.name == "gateway.outbound" for r in caplog.records)
    for token in partner.bound:
        for record in caplog.records:
            assert token not in record.getMessage()
            assert token not in repr(record.__dict__)
    for source in running.listener.token_sources.values():
        assert all(token not in repr(source._token) for token in partner.bound)
