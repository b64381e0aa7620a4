"""Discovery at both well-known paths, and the JWKS: public, cacheable, per listener."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.oauth.keys import load_signing_key
from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"
WELL_KNOWN = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Any:
    return await make_gateway(clients=[registry_client("mtls.client", name_secret(CLIENT_DN))])


async def test_metadata_without_a_client_certificate(gateway: Any) -> None:
    base = gateway.gateway.listeners[0].public_url
    assert base == f"https://127.0.0.1:{gateway.port}"  # resolved at bind: no public_url set
    async with gateway.session(None) as session:
        documents = []
        for path in WELL_KNOWN:
            async with session.get(gateway.url + path) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/json")
                assert resp.headers["Cache-Control"] == "public, max-age=300"
                documents.append(await resp.json())
    assert documents[0] == documents[1]
    assert documents[0] == {
        "issuer": "https://gateway.test",
        "jwks_uri": f"{base}/.well-known/openid-configuration/jwks",
        "token_endpoint": f"{base}/connect/token",
        "introspection_endpoint": f"{base}/connect/introspect",
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["none"],
        "scopes_supported": [],
        "token_endpoint_auth_methods_supported": ["tls_client_auth", "self_signed_tls_client_auth"],
        "introspection_endpoint_auth_methods_supported": [
            "tls_client_auth",
            "self_signed_tls_client_auth",
        ],
        "tls_client_certificate_bound_access_tokens": True,
        "mtls_endpoint_aliases": {
            "token_endpoint": f"{base}/connect/mtls/token",
            "introspection_endpoint": f"{base}/connect/mtls/introspect",
        },
    }


async def test_endpoints_use_the_listeners_public_url(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    listener = {
        "bind": "127.0.0.1:0",
        "public_url": "https://gw.example.com:8443",
        "tls": {
            "cert": str(pki.server.cert_path),
            "key": str(pki.server.key_path),
            "client_ca": str(pki.ca.cert_path),
        },
    }
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        extra={"listeners": [listener]},
    )
    # With a certificate: the same document.
    async with gw.session(client_cert) as session, session.get(gw.url + WELL_KNOWN[0]) as resp:
        doc = await resp.json()
    assert doc["issuer"] == "https://gateway.test"  # the issuer is config, not the listener
    assert doc["token_endpoint"] == "https://gw.example.com:8443/connect/token"
    assert doc["mtls_endpoint_aliases"]["token_endpoint"] == (
        "https://gw.example.com:8443/connect/mtls/token"
    )


async def test_jwks_publishes_public_keys_only(gateway: Any) -> None:
    async with (
        gateway.session(None) as session,
        session.get(gateway.url + "/.well-known/openid-configuration/jwks") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=300"
        jwks = await resp.json()
    (key,) = jwks["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256"
    assert key["alg"] == "ES256"
    assert key["use"] == "sig"
    assert key["kid"] == load_signing_key(gateway.config_path.parent / "signing.pem").kid
    assert not PRIVATE_JWK_MEMBERS & set(key)


async def test_head_and_wrong_methods(gateway: Any) -> None:
    async with gateway.session(None) as session:
        async with session.head(gateway.url + WELL_KNOWN[0]) as resp:
            assert resp.status == 200
            assert await resp.read() == b""
        async with session.post(gateway.url + WELL_KNOWN[1], data=b"") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET, HEAD"
            assert (await resp.json())["error"] == "invalid_request"


async def test_metadata_passes_authlibs_rfc8414_validation(make_gateway: MakeGateway) -> None:
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

    gateway = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=[
            {
                "prefix": "/api",
                "upstream": "http://127.0.0.1:1",
                "auth": "token",
                "scopes": ["api1"],
            },
            {
                "prefix": "/b",
                "upstream": "http://127.0.0.1:1",
                "auth": "token",
                "scopes": ["b", "api1"],
            },
        ],
    )
    async with (
        gateway.session(None) as session,
        session.get(gateway.url + "/.well-known/oauth-authorization-server") as resp,
    ):
        document = await resp.json()
    AuthorizationServerMetadata(document).validate()  # raises on any RFC 8414 violation
    assert document["scopes_supported"] == ["api1", "b"]
    # Nothing claimed that the gateway does not do: no OpenID provider members.
    assert not {"authorization_endpoint", "userinfo_endpoint", "subject_types_supported"} & set(
        document
    )
