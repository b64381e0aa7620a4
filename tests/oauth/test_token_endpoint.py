"""The token endpoint over real mTLS: the IdentityModel flow, every error code, token claims."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt  # PyJWT: an independent verifier for what the gateway signs
import pytest
from multidict import CIMultiDictProxy

from tests.conftest import (
    MakeGateway,
    Upstream,
    echoed_headers,
    name_secret,
    registry_client,
    thumbprint_secret,
)
from tests.pki import Issued, Pki, dn

CLIENT_DN = "CN=client, OU=production, O=company"
ISSUER = "https://gateway.test"
AUDIENCE = f"{ISSUER}/resources"
FORM = "application/x-www-form-urlencoded"


def x5t_s256(cert: Issued) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(cert.der).digest()).rstrip(b"=").decode()


def token_routes(upstream: Upstream, scopes: list[str] | None = None) -> list[dict[str, Any]]:
    return [
        {"prefix": "/api", "upstream": upstream.url, "auth": "token", "scopes": scopes or ["api1"]},
        {"prefix": "/", "upstream": upstream.url, "auth": "client"},
    ]


async def post(
    session: aiohttp.ClientSession, url: str, data: Any, **kwargs: Any
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with session.post(url, data=data, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def jwks_of(session: aiohttp.ClientSession, base_url: str) -> jwt.PyJWKSet:
    async with session.get(base_url + "/.well-known/openid-configuration/jwks") as resp:
        assert resp.status == 200
        return jwt.PyJWKSet.from_dict(await resp.json())


def decode(token: str, jwks: jwt.PyJWKSet) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    key = jwks[header["kid"]]
    claims = jwt.decode(
        token, key, algorithms=[key.algorithm_name], audience=AUDIENCE, issuer=ISSUER
    )
    return header, claims


@pytest.fixture
async def seed_gateway(make_gateway: MakeGateway, echo_upstream: Upstream) -> AsyncIterator[Any]:
    yield await make_gateway(
        clients=[
            registry_client(
                "mtls.client",
                name_secret(CLIENT_DN),
                allowed_scopes=["api1", "api2"],
                claims={"tenant": "acme"},
            )
        ],
        routes=token_routes(echo_upstream),
    )


async def test_identitymodel_flow(seed_gateway: Any, client_cert: Issued) -> None:
    """The seed's client: discovery without a certificate, then the mTLS alias with one."""
    gw = seed_gateway
    async with (
        gw.session(None) as anonymous,
        anonymous.get(gw.url + "/.well-known/openid-configuration") as resp,
    ):
        assert resp.status == 200
        disco = await resp.json()
    assert disco["issuer"] == ISSUER
    alias = disco["mtls_endpoint_aliases"]["token_endpoint"]
    assert alias.endswith("/connect/mtls/token")

    async with gw.session(client_cert) as session:
        status, body, headers = await post(
            session,
            alias,
            {"grant_type": "client_credentials", "client_id": "mtls.client", "scope": "api1"},
        )
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 300
        assert body["scope"] == "api1"
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}

        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        async with session.get(gw.url + "/api/orders", headers=bearer) as resp:
            assert resp.status == 200
            echoed = echoed_headers(await resp.json())
    assert echoed["x-client-id"] == ["mtls.client"]
    assert echoed["x-client-cert-sha256"] == [x5t_s256(client_cert)]
    assert echoed["authorization"] == [bearer["Authorization"]]  # the API's token, kept


async def test_identitymodel_default_basic_style_with_no_secret(
    seed_gateway: Any, client_cert: Issued
) -> None:
    """IdentityModel's default ClientCredentialStyle.AuthorizationHeader: client_id as
    HTTP Basic with an empty password (RFC 6749 §2.3.1), nothing in the body."""
    gw = seed_gateway
    basic = base64.b64encode(b"mtls.client:").decode()
    async with gw.session(client_cert) as session:
        status, body, _ = await post(
            session,
            gw.url + "/connect/mtls/token",
            {"grant_type": "client_credentials", "scope": "api1"},
            headers={"Authorization": f"Basic {basic}"},
        )
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "mtls.client"


async def test_token_claims_verify_with_pyjwt_against_the_jwks(
    seed_gateway: Any, client_cert: Issued
) -> None:
    gw = seed_gateway
    async with gw.session(client_cert) as session:
        before = int(time.time())
        status, body, _ = await post(
            session,
            gw.url + "/connect/token",
            {"grant_type": "client_credentials", "client_id": "mtls.client"},
        )
        assert status == 200, body
        jwks = await jwks_of(session, gw.url)
    header, claims = decode(body["access_token"], jwks)

    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    assert header["kid"] in {key.key_id for key in jwks.keys}
    assert claims["iss"] == ISSUER
    assert claims["sub"] == claims["client_id"] == "mtls.client"
    assert claims["aud"] == AUDIENCE
    assert claims["scope"] == body["scope"] == "api1 api2"  # default: every allowed scope
    assert claims["iat"] == claims["nbf"]
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert claims["exp"] - claims["iat"] == body["expires_in"] == 300
    assert len(claims["jti"]) >= 22
    assert claims["cnf"] == {"x5t#S256": x5t_s256(client_cert)}
    assert claims["tenant"] == "acme"  # the client's claims


async def test_each_token_gets_a_fresh_jti(seed_gateway: Any, client_cert: Issued) -> None:
    gw = seed_gateway
    form = {"grant_type": "client_credentials", "client_id": "mtls.client"}
    async with gw.session(client_cert) as session:
        bodies = [(await post(session, gw.url + "/connect/token", form))[1] for _ in range(3)]
    jtis = {
        jwt.decode(b["access_token"], options={"verify_signature": False})["jti"] for b in bodies
    }
    assert len(jtis) == 3


async def test_per_client_lifetime_and_array_scope_format(
    make_gateway: MakeGateway, client_cert: Issued, tmp_path: Any
) -> None:
    gw = await make_gateway(
        clients=[
            registry_client(
                "mtls.client",
                name_secret(CLIENT_DN),
                allowed_scopes=["api1", "api2"],
                access_token_lifetime=60,
            )
        ],
        extra={
            "tokens": {
                "signing_keys": [str(tmp_path / "gw0" / "signing.pem")],
                "lifetime": 300,
                "scope_format": "array",
                "audience": "urn:api",
            }
        },
    )
    async with gw.session(client_cert) as session:
        status, body, _ = await post(
            session,
            gw.url + "/connect/token",
            {"grant_type": "client_credentials", "client_id": "mtls.client", "scope": "api2 api1"},
        )
    assert status == 200, body
    assert body["expires_in"] == 60
    assert body["scope"] == "api2 api1"  # the response is always RFC 6749's string
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["scope"] == ["api2", "api1"]  # IdentityServer's array in the token
    assert claims["aud"] == "urn:api"
    assert claims["exp"] - claims["iat"] == 60


async def test_self_signed_pinned_client_gets_a_bound_token(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    """RFC 8705 §2.2 self_signed_tls_client_auth: a thumbprint pin, no CA."""
    own = pki.certificate(dn("self-issued", ou=None), self_signed=True)
    gw = await make_gateway(
        clients=[registry_client("mtls.tb", thumbprint_secret(own.thumbprint.upper()))],
        tls={"pinned_certs": [str(own.cert_path)]},
    )
    async with gw.session(own) as session:
        status, body, _ = await post(
            session,
            gw.url + "/connect/mtls/token",
            {"grant_type": "client_credentials", "client_id": "mtls.tb"},
        )
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"x5t#S256": x5t_s256(own)}
    assert claims["client_id"] == "mtls.tb"


async def test_certificate_of_two_clients_gets_the_one_it_names(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    """client_id picks among the clients the certificate authenticates, never another."""
    gw = await make_gateway(
        clients=[
            registry_client("mtls.client", name_secret(CLIENT_DN), allowed_scopes=["api1"]),
            registry_client(
                "mtls.spiffe",
                {"type": "X509SanUri", "value": "spiffe://example.org/ns/prod/sa/client"},
                allowed_scopes=["api1"],
            ),
        ],
        routes=token_routes(echo_upstream),
    )
    async with gw.session(client_cert) as session:
        status, body, _ = await post(
            session,
            gw.url + "/connect/token",
            {"grant_type": "client_credentials", "client_id": "mtls.spiffe"},
        )
        assert status == 200, body
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        async with session.get(gw.url + "/api/x", headers=bearer) as resp:
            assert resp.status == 200
            echoed = echoed_headers(await resp.json())
    assert echoed["x-client-id"] == ["mtls.spiffe"]


# -- errors: RFC 6749 §5.2 -------------------------------------------------------

GOOD = {"grant_type": "client_credentials", "client_id": "mtls.client"}


def form(**changes: str | None) -> dict[str, str]:
    result = {**GOOD, **changes}
    return {k: v for k, v in result.items() if v is not None}


ERROR_CASES: list[tuple[str, Any, dict[str, str], int, str]] = [
    # (id, form data, extra headers, status, error)
    ("missing-client-id", form(client_id=None), {}, 401, "invalid_client"),
    ("empty-client-id", form(client_id=""), {}, 401, "invalid_client"),
    ("unknown-client", form(client_id="nobody"), {}, 401, "invalid_client"),
    ("other-clients-id", form(client_id="other.client"), {}, 401, "invalid_client"),
    ("disabled-client", form(client_id="disabled.client"), {}, 401, "invalid_client"),
    ("missing-grant-type", form(grant_type=None), {}, 400, "invalid_request"),
    ("password-grant", form(grant_type="password"), {}, 400, "unsupported_grant_type"),
    ("code-grant", form(grant_type="authorization_code"), {}, 400, "unsupported_grant_type"),
    ("grant-not-allowed", form(client_id="no-grants"), {}, 400, "unauthorized_client"),
    ("scope-not-allowed", form(scope="api1 admin"), {}, 400, "invalid_scope"),
    ("scope-malformed", form(scope='api1 "x"'), {}, 400, "invalid_scope"),
    ("scope-tab-delimited", form(scope="api1\tapi2"), {}, 400, "invalid_scope"),
    ("scope-only-spaces", form(scope="   "), {}, 400, "invalid_scope"),
    ("client-secret", form(client_secret="s3cret"), {}, 400, "invalid_request"),
    ("client-assertion", form(client_assertion="a.b.c"), {}, 400, "invalid_request"),
    (
        "basic-auth-with-secret",  # mtls.client:s3cret
        form(client_id=None),
        {"Authorization": "Basic bXRscy5jbGllbnQ6czNjcmV0"},
        400,
        "invalid_request",
    ),
    (
        "basic-auth-other-client",  # other.client: (empty password) vs form mtls.client
        form(),
        {"Authorization": "Basic b3RoZXIuY2xpZW50Og=="},
        400,
        "invalid_request",
    ),
    ("bearer-auth", form(), {"Authorization": "Bearer x.y.z"}, 400, "invalid_request"),
    (
        "duplicate-client-id",
        [*GOOD.items(), ("client_id", "mtls.client")],
        {},
        400,
        "invalid_request",
    ),
    (
        "duplicate-scope",
        [*GOOD.items(), ("scope", "api1"), ("scope", "api2")],
        {},
        400,
        "invalid_request",
    ),
    ("json-body", json.dumps(GOOD), {"Content-Type": "application/json"}, 400, "invalid_request"),
    (
        "no-content-type",
        b"grant_type=client_credentials",
        {"Content-Type": ""},
        400,
        "invalid_request",
    ),
]


@pytest.fixture
async def errors_gateway(make_gateway: MakeGateway, pki: Pki) -> Any:
    other = pki.client("other")
    return await make_gateway(
        clients=[
            registry_client("mtls.client", name_secret(CLIENT_DN), allowed_scopes=["api1", "api2"]),
            registry_client("other.client", name_secret("CN=other, OU=production, O=company")),
            # Same certificate as mtls.client, but switched off or without grants.
            registry_client("disabled.client", name_secret(CLIENT_DN), enabled=False),
            registry_client("no-grants", name_secret(CLIENT_DN), allowed_grant_types=[]),
        ],
        extra={"limits": {"max_token_request_bytes": 1024, "header_read_timeout": 0.5}},
    ), other


def assert_oauth_error(
    status: int, body: dict[str, Any], headers: Any, want: tuple[int, str]
) -> None:
    assert (status, body.get("error")) == want, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("data", "headers", "status", "error"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_token_errors(
    errors_gateway: Any,
    client_cert: Issued,
    data: Any,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    gw, _ = errors_gateway
    async with gw.session(client_cert) as session:
        got = await post(session, gw.url + "/connect/token", data, headers=headers)
    assert_oauth_error(*got, (status, error))


async def test_no_certificate_is_invalid_client(errors_gateway: Any) -> None:
    gw, _ = errors_gateway
    async with gw.session(None) as session:
        got = await post(session, gw.url + "/connect/token", GOOD)
    assert_oauth_error(*got, (401, "invalid_client"))
    assert "certificate" in got[1]["error_description"]


async def test_body_over_the_limit_is_413(errors_gateway: Any, client_cert: Issued) -> None:
    gw, _ = errors_gateway
    padded = form(scope="api1 " + "x" * 2000)
    async with gw.session(client_cert) as session:
        got = await post(session, gw.url + "/connect/token", padded)
        assert_oauth_error(*got, (413, "invalid_request"))

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(10):
                yield b"scope=" + b"x" * 200 + b"&"

        got = await post(
            session, gw.url + "/connect/token", chunks(), headers={"Content-Type": FORM}
        )
        assert_oauth_error(*got, (413, "invalid_request"))


async def test_slow_body_times_out(errors_gateway: Any, client_cert: Issued) -> None:
    gw, _ = errors_gateway

    async def trickle() -> AsyncIterator[bytes]:
        yield b"grant_type=client_credentials"
        await asyncio.sleep(2)
        yield b"&client_id=mtls.client"

    async with gw.session(client_cert) as session:
        got = await post(
            session, gw.url + "/connect/token", trickle(), headers={"Content-Type": FORM}
        )
    assert_oauth_error(*got, (408, "invalid_request"))


async def test_get_is_405_and_never_forwarded(errors_gateway: Any, client_cert: Issued) -> None:
    gw, _ = errors_gateway
    async with gw.session(client_cert) as session, session.get(gw.url + "/connect/token") as resp:
        body = await resp.json()
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
    assert body["error"] == "invalid_request"


GARBAGE = [
    b"\xff\xfe\xfd",
    b"%",
    b"%zz=%",
    b"grant_type=%ff",
    b"=&=&&&",
    b"grant_type=client_credentials&client_id=%00",
    b"grant_type=client_credentials&client_id=" + "é".encode() * 50,
    b"grant_type=client_credentials&client_id=mtls.client&scope=" + "ü".encode(),
    b"grant_type=client_credentials&client_id=mtls.client&scope=%20%20",
    b"&".join(b"f%d=1" % i for i in range(100)),
    b"grant_type=client_credentials&client_id=mtls.client&scope=api1;api2",
    b"grant_type[]=client_credentials",
    b"\x00" * 500,
]


@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_never_yields_a_5xx(
    errors_gateway: Any, client_cert: Issued, body: bytes
) -> None:
    gw, _ = errors_gateway
    async with gw.session(client_cert) as session:
        status, answer, _headers = await post(
            session, gw.url + "/connect/token", body, headers={"Content-Type": FORM}
        )
    assert status < 500
    assert "error" in answer or status == 200
