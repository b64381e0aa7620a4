"""``auth: token`` routes: certificate-bound bearer tokens checked by the gateway itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt  # PyJWT: forges the tokens, independently of the code under test
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict

from gateway.oauth.keys import SigningKey, load_signing_key
from tests.conftest import MakeGateway, Upstream, echoed_headers, name_secret, registry_client
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"
ISSUER = "https://gateway.test"
AUDIENCE = f"{ISSUER}/resources"
GRANT = {"grant_type": "client_credentials", "client_id": "mtls.client"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def x5t_s256(cert: Issued) -> str:
    return b64url(hashlib.sha256(cert.der).digest())


def registry(*, scopes: list[str], enabled: bool = True) -> list[dict[str, Any]]:
    return [
        registry_client(
            "mtls.client", name_secret(CLIENT_DN), allowed_scopes=scopes, enabled=enabled
        )
    ]


@pytest.fixture
async def gw(make_gateway: MakeGateway, echo_upstream: Upstream) -> Any:
    return await make_gateway(
        clients=registry(scopes=["api1", "admin"]),
        routes=[
            {"prefix": "/api", "upstream": echo_upstream.url, "auth": "token", "scopes": ["api1"]},
            {
                "prefix": "/admin",
                "upstream": echo_upstream.url,
                "auth": "token",
                "scopes": ["admin"],
            },
            {
                "prefix": "/partners",
                "upstream": echo_upstream.url,
                "auth": "token",
                "clients": ["acme"],
            },
            {"prefix": "/", "upstream": echo_upstream.url, "auth": "client"},
        ],
    )


def signing_key(gw: Any) -> SigningKey:
    return load_signing_key(gw.config_path.parent / "signing.pem")


async def get_token(gw: Any, cert: Issued, **extra: str) -> str:
    async with (
        gw.session(cert) as session,
        session.post(gw.url + "/connect/token", data={**GRANT, **extra}) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["access_token"])


async def call(
    gw: Any, cert: Issued | None, path: str, headers: Any = None
) -> tuple[int, dict[str, Any], Any]:
    async with gw.session(cert) as session, session.get(gw.url + path, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_invalid_token(result: tuple[int, dict[str, Any], Any], reason: str) -> None:
    status, body, headers = result
    assert status == 401, body
    assert body["error"] == "invalid_token"
    assert body["error_description"] == reason
    assert headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{reason}"'
    )
    assert headers["Cache-Control"] == "no-store"


async def test_bound_token_reaches_upstream_with_identity_headers(
    gw: Any, client_cert: Issued
) -> None:
    token = await get_token(gw, client_cert)
    spoofed = {**bearer(token), "X-Client-Id": "admin", "X_Client_Cert_Sha256": "forged"}
    status, body, _ = await call(gw, client_cert, "/api/orders?page=2", spoofed)
    assert status == 200
    assert body["path"] == "/api/orders?page=2"
    echoed = echoed_headers(body)
    assert echoed["x-client-id"] == ["mtls.client"]
    assert echoed["x-client-cert-sha256"] == [x5t_s256(client_cert)]
    assert echoed["x-client-cert-subject"] == [CLIENT_DN]
    assert echoed["authorization"] == [f"Bearer {token}"]


async def test_token_bound_to_certificate_a_refused_with_certificate_b(
    gw: Any, pki: Pki, client_cert: Issued
) -> None:
    """RFC 8705 §3: same DN, same registered client, another key: still refused."""
    token = await get_token(gw, client_cert)
    twin = pki.client("client")  # CN=client, OU=production, O=company, a new key pair
    assert twin.thumbprint != client_cert.thumbprint
    result = await call(gw, twin, "/api/x", bearer(token))
    assert_invalid_token(result, "token is bound to a different client certificate")
    # Certificate B gets its own token, which works with B only.
    assert (await call(gw, twin, "/api/x", bearer(await get_token(gw, twin))))[0] == 200


async def test_token_without_a_client_certificate_is_refused(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert)
    result = await call(gw, None, "/api/x", bearer(token))
    assert_invalid_token(result, "certificate-bound token sent without a client certificate")


async def test_missing_token_gets_a_bare_challenge(gw: Any, client_cert: Issued) -> None:
    for headers in (None, {"Authorization": "Basic bXRscy5jbGllbnQ6"}):
        status, body, hdrs = await call(gw, client_cert, "/api/x", headers)
        assert status == 401
        assert hdrs["WWW-Authenticate"] == "Bearer"  # RFC 6750 §3.1: no error code
        assert body["error"] == "invalid_token"


async def test_token_in_the_query_is_refused(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert)
    status, body, headers = await call(gw, client_cert, f"/api/x?access_token={token}")
    assert status == 400
    assert body["error"] == "invalid_request"
    assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_request"')


async def test_token_in_the_form_body_is_not_accepted(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert)
    async with (
        gw.session(client_cert) as session,
        session.post(gw.url + "/api/x", data={"access_token": token}) as resp,
    ):
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_two_authorization_headers_are_refused(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert)
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), ("Authorization", "Bearer x")])
    status, body, _ = await call(gw, client_cert, "/api/x", headers)
    assert (status, body["error"]) == (400, "invalid_request")


async def test_malformed_bearer_value(gw: Any, client_cert: Issued) -> None:
    result = await call(gw, client_cert, "/api/x", {"Authorization": "Bearer a b"})
    assert_invalid_token(result, "malformed bearer token")
    result = await call(gw, client_cert, "/api/x", {"Authorization": "Bearer not-a-jwt"})
    assert_invalid_token(result, "not a compact JWS")


async def test_scheme_is_case_insensitive(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert)
    status, _, _ = await call(gw, client_cert, "/api/x", {"Authorization": f"bearer  {token}"})
    assert status == 200


# -- forged and foreign tokens ---------------------------------------------------


def claims_for(cert: Issued, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "mtls.client",
        "client_id": "mtls.client",
        "aud": AUDIENCE,
        "scope": "api1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "forged-but-unique-jti-0001",
        "cnf": {"x5t#S256": x5t_s256(cert)},
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def native(key: SigningKey) -> ec.EllipticCurvePrivateKey:
    private = key.private_key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # the fixture's key is ES256
    return private


def signed(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    headers = {"kid": key.kid, "typ": "at+jwt", **header}
    return jwt.encode(claims, native(key), algorithm=key.alg, headers=headers)


def hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    """The classic confusion attack: HMAC keyed with the published public key."""
    public_pem = (
        native(key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = (
        f"{b64json({'alg': 'HS256', 'typ': 'at+jwt', 'kid': key.kid})}.{b64json(claims)}"
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def alg_none(key: SigningKey, claims: dict[str, Any], signature: str = "") -> str:
    return (
        f"{b64json({'alg': 'none', 'typ': 'at+jwt', 'kid': key.kid})}.{b64json(claims)}.{signature}"
    )


def stranger(claims: dict[str, Any], kid: str) -> str:
    other = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, other, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


FORGERIES: list[tuple[str, Any, str]] = [
    # (id, build(key, cert) -> token, reason in error_description)
    ("expired", lambda k, c: signed(k, claims_for(c, exp=int(time.time()) - 120)), "token expired"),
    (
        "not-yet-valid",
        lambda k, c: signed(k, claims_for(c, nbf=int(time.time()) + 600)),
        "token not yet valid",
    ),
    (
        "wrong-issuer",
        lambda k, c: signed(k, claims_for(c, iss="https://evil.example")),
        "wrong issuer",
    ),
    (
        "wrong-audience",
        lambda k, c: signed(k, claims_for(c, aud="urn:other-api")),
        "wrong audience",
    ),
    ("alg-none", lambda k, c: alg_none(k, claims_for(c)), "not a compact JWS"),
    (
        "alg-none-with-signature",
        lambda k, c: alg_none(k, claims_for(c), "AAAA"),
        "algorithm not allowed",
    ),
    (
        "hs256-public-key",
        lambda k, c: hs256_with_public_key(k, claims_for(c)),
        "algorithm not allowed",
    ),
    ("unknown-kid", lambda k, c: stranger(claims_for(c), "no-such-kid"), "unknown kid"),
    ("other-key-our-kid", lambda k, c: stranger(claims_for(c), k.kid), "bad signature"),
    ("typ-jwt", lambda k, c: signed(k, claims_for(c), typ="JWT"), "wrong token type"),
    ("unbound", lambda k, c: signed(k, claims_for(c, cnf=None)), "token is not certificate-bound"),
    (
        "unknown-client",
        lambda k, c: signed(k, claims_for(c, client_id="ghost", sub="ghost")),
        "the token's client is no longer registered or enabled",
    ),
]


async def test_a_well_formed_forgery_with_our_key_passes(gw: Any, client_cert: Issued) -> None:
    """The control for the table below: each forgery differs from this in one thing."""
    token = signed(signing_key(gw), claims_for(client_cert))
    assert (await call(gw, client_cert, "/api/x", bearer(token)))[0] == 200


@pytest.mark.parametrize(
    ("build", "reason"), [f[1:] for f in FORGERIES], ids=[f[0] for f in FORGERIES]
)
async def test_forged_tokens_are_refused(
    gw: Any, client_cert: Issued, build: Any, reason: str
) -> None:
    token = build(signing_key(gw), client_cert)
    assert_invalid_token(await call(gw, client_cert, "/api/x", bearer(token)), reason)


# -- scopes, allow-lists and registry changes ------------------------------------


async def test_insufficient_scope_is_403(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert, scope="api1")
    status, body, headers = await call(gw, client_cert, "/admin/users", bearer(token))
    assert status == 403
    assert body["error"] == "insufficient_scope"
    assert headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", '
        'error_description="the access token lacks a scope this route requires", scope="admin"'
    )
    admin = await get_token(gw, client_cert, scope="admin")
    assert (await call(gw, client_cert, "/admin/users", bearer(admin)))[0] == 200


async def test_route_client_allow_list_applies_to_the_tokens_client(
    gw: Any, client_cert: Issued
) -> None:
    token = await get_token(gw, client_cert)
    status, body, _ = await call(gw, client_cert, "/partners/x", bearer(token))
    assert (status, body["error"]) == (403, "access_denied")


async def rewrite_registry(gw: Any, clients: list[dict[str, Any]]) -> None:
    gw.registry_path.write_text(yaml.safe_dump({"clients": clients}))
    assert gw.gateway.registry.reload()


async def test_scope_taken_from_the_client_stops_working_at_once(
    gw: Any, client_cert: Issued
) -> None:
    token = await get_token(gw, client_cert, scope="api1 admin")
    assert (await call(gw, client_cert, "/admin/x", bearer(token)))[0] == 200
    await rewrite_registry(gw, registry(scopes=["api1"]))
    status, body, _ = await call(gw, client_cert, "/admin/x", bearer(token))
    assert (status, body["error"]) == (403, "insufficient_scope")
    assert (await call(gw, client_cert, "/api/x", bearer(token)))[0] == 200


async def test_disabled_client_tokens_stop_working(gw: Any, client_cert: Issued) -> None:
    token = await get_token(gw, client_cert)
    async with gw.session(client_cert) as session:  # one keep-alive connection throughout
        async with session.get(gw.url + "/api/x", headers=bearer(token)) as resp:
            assert resp.status == 200
        await rewrite_registry(gw, registry(scopes=["api1", "admin"], enabled=False))
        async with session.get(gw.url + "/api/x", headers=bearer(token)) as resp:
            body = await resp.json()
            assert resp.status == 401
    assert body["error_description"] == "the token's client is no longer registered or enabled"


async def test_client_route_ignores_bearer_tokens(gw: Any, client_cert: Issued) -> None:
    """auth: client routes need no token; a stray Authorization header is the API's business."""
    status, body, _ = await call(gw, client_cert, "/other", {"Authorization": "Bearer junk"})
    assert status == 200
    assert echoed_headers(body)["authorization"] == ["Bearer junk"]
