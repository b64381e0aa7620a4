"""Introspection (RFC 7662): callers authenticated by certificate; anything invalid is inactive."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.oauth.keys import load_signing_key
from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"
RS_DN = "CN=orders-api, OU=production, O=company"


def clients(*, enabled: bool = True) -> list[dict[str, Any]]:
    return [
        registry_client(
            "mtls.client",
            name_secret(CLIENT_DN),
            allowed_scopes=["api1", "api2"],
            claims={"tenant": "acme"},
            enabled=enabled,
        ),
        registry_client("orders.api", name_secret(RS_DN), allowed_scopes=[]),
    ]


@pytest.fixture
async def gw(make_gateway: MakeGateway, tmp_path: Any) -> Any:
    return await make_gateway(
        clients=clients(),
        extra={
            "tokens": {
                "signing_keys": [str(tmp_path / "gw0" / "signing.pem")],
                "lifetime": 300,
                "scope_format": "array",
            }
        },
    )


@pytest.fixture(scope="module")
def resource_server(pki: Pki) -> Issued:
    return pki.client("orders-api")


async def issue(gw: Any, cert: Issued) -> str:
    async with gw.session(cert) as session:
        data = {"grant_type": "client_credentials", "client_id": "mtls.client"}
        async with session.post(gw.url + "/connect/token", data=data) as resp:
            assert resp.status == 200
            return str((await resp.json())["access_token"])


async def introspect(
    gw: Any, cert: Issued | None, data: dict[str, str], path: str = "/connect/introspect"
) -> tuple[int, dict[str, Any], Any]:
    async with gw.session(cert) as session, session.post(gw.url + path, data=data) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_active_token(gw: Any, client_cert: Issued, resource_server: Issued) -> None:
    token = await issue(gw, client_cert)
    status, body, headers = await introspect(gw, resource_server, {"token": token})
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "api1 api2"  # RFC 7662 §2.2: a string, though the token has an array
    assert body["client_id"] == body["sub"] == "mtls.client"
    assert body["iss"] == "https://gateway.test"
    assert body["aud"] == "https://gateway.test/resources"
    assert body["exp"] - body["iat"] == 300 and body["nbf"] == body["iat"]
    assert body["jti"]
    digest = hashlib.sha256(client_cert.der).digest()
    assert body["cnf"] == {"x5t#S256": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()}
    assert body["tenant"] == "acme"


async def test_mtls_alias_and_token_type_hint(
    gw: Any, client_cert: Issued, resource_server: Issued
) -> None:
    token = await issue(gw, client_cert)
    data = {"token": token, "token_type_hint": "access_token", "client_id": "orders.api"}
    status, body, _ = await introspect(gw, resource_server, data, "/connect/mtls/introspect")
    assert (status, body["active"]) == (200, True)


def expired(gw: Any) -> str:
    key = load_signing_key(gw.config_path.parent / "signing.pem")
    private = key.private_key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    now = int(time.time()) - 3600
    claims = {
        "iss": "https://gateway.test",
        "sub": "mtls.client",
        "client_id": "mtls.client",
        "aud": "https://gateway.test/resources",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "expired-token-jti-000001",
    }
    return jwt.encode(
        claims,
        private,
        algorithm="ES256",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        pytest.param("expired", id="expired"),
        pytest.param("tampered", id="tampered"),
    ],
)
async def test_anything_invalid_is_just_inactive(
    gw: Any, client_cert: Issued, resource_server: Issued, token: str
) -> None:
    if token == "expired":
        token = expired(gw)
    elif token == "tampered":
        good = await issue(gw, client_cert)
        head, payload, signature = good.split(".")
        token = f"{head}.{payload[:-2]}AA.{signature}"
    status, body, headers = await introspect(gw, resource_server, {"token": token})
    assert (status, body) == (200, {"active": False})
    assert headers["Cache-Control"] == "no-store"


async def test_token_of_a_disabled_client_is_inactive(
    gw: Any, client_cert: Issued, resource_server: Issued
) -> None:
    token = await issue(gw, client_cert)
    gw.registry_path.write_text(yaml.safe_dump({"clients": clients(enabled=False)}))
    assert gw.gateway.registry.reload()
    status, body, _ = await introspect(gw, resource_server, {"token": token})
    assert (status, body) == (200, {"active": False})


async def test_callers_must_be_registered_clients(
    gw: Any, pki: Pki, client_cert: Issued, resource_server: Issued
) -> None:
    token = await issue(gw, client_cert)
    for cert in (None, pki.client("unregistered")):
        status, body, _ = await introspect(gw, cert, {"token": token})
        assert (status, body["error"]) == (401, "invalid_client")
    # A client_id the certificate does not authenticate is refused too.
    status, body, _ = await introspect(
        gw, resource_server, {"token": token, "client_id": "mtls.client"}
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def test_request_errors(gw: Any, resource_server: Issued) -> None:
    status, body, _ = await introspect(gw, resource_server, {})
    assert (status, body["error"]) == (400, "invalid_request")
    async with gw.session(resource_server) as session:
        async with session.get(gw.url + "/connect/introspect") as resp:
            assert resp.status == 405
        async with session.post(gw.url + "/connect/introspect", json={"token": "x"}) as resp:
            assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")
        data = [("token", "a"), ("token", "b")]
        async with session.post(gw.url + "/connect/introspect", data=data) as resp:
            assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")
