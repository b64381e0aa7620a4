"""Host: one authority, a valid port, and an absolute-form target that agrees with it.

The gateway relays the caller's authority as ``X-Forwarded-Host`` (and as
``Host`` on ``preserve_host`` routes), where upstream link and redirect
builders trust it.  RFC 9110 §7.2 allows one ``uri-host [":" port]``; RFC
9112 §3.2.2 says a client sending an absolute-form target MUST send a Host
identical to its authority, and that a server uses the target's authority,
so two different authorities in one request are refused rather than one of
them being picked.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeGateway
from tests.security.conftest import RecordingUpstream, recording_gateway
from tests.test_proxy import RawConnection

# (request target, Host) -> status; nothing refused ever reaches the upstream.
CASES: dict[tuple[str, str], int] = {
    # One authority only: a comma is a list of two, whatever reg-name allows.
    ("/public/x", "a.com,evil.com"): 400,
    ("/public/x", "a.com;evil.com"): 400,
    ("/public/x", "a.com%2Cevil.com"): 400,
    # A port is 1-65535 in at most five digits.
    ("/public/x", "a.com:99999999999"): 400,
    ("/public/x", "a.com:65536"): 400,
    ("/public/x", "a.com:0"): 400,
    ("/public/x", "a.com:+80"): 400,
    ("/public/x", "a.com:65535"): 200,
    ("/public/x", "a.com:"): 200,  # RFC 3986 §3.2.3: an empty port is the default
    # Absolute-form: its authority must be the Host (RFC 9112 §3.2.2).
    ("https://evil.com/public/x", "localhost"): 400,
    ("https://evil.com:99/public/x", "evil.com"): 400,
    ("https://user@localhost/public/x", "localhost"): 400,  # RFC 9110 §4.2.4: no userinfo
    ("https://a.com,evil.com/public/x", "a.com,evil.com"): 400,
    ("https://localhost/public/x", "localhost"): 200,
    ("https://LocalHost/public/x", "localhost"): 200,
    ("https://localhost:443/public/x", "localhost"): 200,  # the scheme's default port
    ("https://localhost:8443/public/x", "localhost:8443"): 200,
}


@pytest.mark.parametrize(("target", "host"), list(CASES))
async def test_host_is_one_valid_authority_agreeing_with_the_target(
    make_gateway: MakeGateway, recording_upstream: RecordingUpstream, target: str, host: str
) -> None:
    gw = await recording_gateway(make_gateway, recording_upstream)
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n")
    finally:
        await conn.close()
    status = CASES[(target, host)]
    assert response.status == status, response.body
    if status == 200:
        (relayed,) = recording_upstream.requests
        assert relayed.target == "/public/x"
        assert relayed.values("X-Forwarded-Host") == [host]
    else:
        assert response.json()["error"] == "invalid_request"
        assert recording_upstream.requests == []


def test_a_host_value_is_checked_once_and_a_bad_one_every_time() -> None:
    from gateway import framing

    assert framing.host_problem("api.example:8443", "/") is None
    assert "api.example:8443" in framing._VALID_HOSTS  # the grammar ran once
    assert framing.host_problem("api.example:8443", "/again") is None
    for _ in range(2):  # refused again, never remembered
        assert (
            framing.host_problem("a.com,evil.com", "/")
            == "invalid Host header: not one host[:port]"
        )
    assert "a.com,evil.com" not in framing._VALID_HOSTS
    for i in range(framing._VALID_HOSTS_BOUND + 10):
        assert framing.host_problem(f"h{i}.example", "/") is None
    assert len(framing._VALID_HOSTS) <= framing._VALID_HOSTS_BOUND
    # A cached Host still has to agree with an absolute-form target.
    assert framing.host_problem("api.example:8443", "https://other.example/") is not None
