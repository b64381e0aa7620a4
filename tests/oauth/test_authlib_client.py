"""A client library we did not write gets a token through discovery and the mTLS alias.

Authlib's OAuth2Session (a requests.Session) reads the metadata, posts
client_credentials to ``mtls_endpoint_aliases.token_endpoint`` presenting the
client certificate, and uses the token on a token route.  The token is then
verified by PyJWT against the JWKS fetched from the gateway: two independent
implementations agreeing with ours.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import jwt
import pytest

from tests.conftest import MakeGateway, Upstream, echoed_headers, name_secret, registry_client
from tests.pki import Issued, Pki

pytest.importorskip("authlib", reason="Authlib is in the test extra: pip install -e .[test]")
pytest.importorskip("requests", reason="requests is in the test extra: pip install -e .[test]")

from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.auth import encode_none
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

CLIENT_DN = "CN=client, OU=production, O=company"


def authlib_flow(base_url: str, pki: Pki, cert: Issued) -> dict[str, Any]:
    """Blocking (requests): run in a thread while the gateway serves on the test loop."""
    with OAuth2Session(
        client_id="mtls.client", scope="api1", token_endpoint_auth_method="tls_client_auth"
    ) as session:
        # RFC 8705 §2 on the wire is what Authlib's "none" method sends:
        # client_id in the body, no secret; the certificate does the rest.
        session.register_client_auth_method(("tls_client_auth", encode_none))
        session.cert = (str(cert.cert_path), str(cert.key_path))
        session.verify = str(pki.ca.cert_path)
        # requests lets REQUESTS_CA_BUNDLE (and proxy variables) override
        # session.verify: keep the environment out of a hermetic test.
        session.trust_env = False

        metadata = AuthorizationServerMetadata(
            session.get(
                base_url + "/.well-known/oauth-authorization-server", withhold_token=True
            ).json()
        )
        for check in ("issuer", "token_endpoint", "jwks_uri", "grant_types_supported"):
            getattr(metadata, f"validate_{check}")()
        metadata.validate_token_endpoint_auth_methods_supported()
        assert "tls_client_auth" in metadata["token_endpoint_auth_methods_supported"]

        token = session.fetch_token(
            metadata["mtls_endpoint_aliases"]["token_endpoint"], grant_type="client_credentials"
        )
        jwks = session.get(metadata["jwks_uri"], withhold_token=True).json()
        api = session.get(base_url + "/api/hello")  # Authlib attaches the bearer token
        return {
            "metadata": dict(metadata),
            "token": dict(token),
            "jwks": jwks,
            "api_status": api.status_code,
            "api_body": api.json(),
        }


async def test_authlib_gets_a_token_that_pyjwt_verifies(
    make_gateway: MakeGateway, echo_upstream: Upstream, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN), allowed_scopes=["api1"])],
        routes=[
            {"prefix": "/api", "upstream": echo_upstream.url, "auth": "token", "scopes": ["api1"]},
            {"prefix": "/", "upstream": echo_upstream.url, "auth": "client"},
        ],
    )
    result = await asyncio.to_thread(authlib_flow, gw.url, pki, client_cert)

    token = result["token"]
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "api1"
    assert result["api_status"] == 200
    assert echoed_headers(result["api_body"])["x-client-id"] == ["mtls.client"]

    key = jwt.PyJWKSet.from_dict(result["jwks"])[
        jwt.get_unverified_header(token["access_token"])["kid"]
    ]
    claims = jwt.decode(
        token["access_token"],
        key,
        algorithms=[key.algorithm_name],
        issuer=result["metadata"]["issuer"],
        audience="https://gateway.test/resources",
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    digest = hashlib.sha256(client_cert.der).digest()
    assert claims["cnf"]["x5t#S256"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert claims["client_id"] == "mtls.client"
