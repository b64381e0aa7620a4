"""Forged bearer tokens beyond tests/oauth: size, kid injection, embedded keys, crit, nesting.

``tests/oauth/test_resource.py`` and ``test_tokens.py`` already refuse alg
none, HS256 keyed with the public key, unknown kids, foreign signatures,
tampered payloads, expiry and not-before, wrong iss/aud/typ, and tokens bound
to another certificate.  Every token here is signed by hand (ES256 over the
exact header bytes), so headers PyJWT would refuse to write can be sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws, jwt

from gateway.oauth.keys import SigningKeySet, generate_signing_key, load_signing_key
from gateway.oauth.tokens import InvalidToken, verify_access_token
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    name_secret,
    registry_client,
)
from tests.oauth.test_resource import (
    assert_invalid_token,
    bearer,
    call,
    claims_for,
    native,
    signing_key,
)
from tests.pki import Issued
from tests.security.conftest import CLIENT_DN
from tests.test_proxy import RawConnection

ISSUER = "https://gateway.test"
AUDIENCE = f"{ISSUER}/resources"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def es256(header: dict[str, Any], payload: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    """A compact JWS over exactly these header and payload bytes."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def assert_refused(result: tuple[int, dict[str, Any], Any], reasons: str) -> None:
    """401 invalid_token with one of the ``|``-separated reasons (the JOSE
    library may stop a malformed header before the gateway names the fault)."""
    for reason in reasons.split("|"):
        if result[1].get("error_description") == reason:
            assert_invalid_token(result, reason)
            return
    assert_invalid_token(result, reasons.split("|")[0])


def claims(cert: Issued) -> bytes:
    return json.dumps(claims_for(cert)).encode()


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
    }


@pytest.fixture
async def gw(make_gateway: MakeGateway, echo_upstream: Upstream) -> GatewayUnderTest:
    return await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=[{"prefix": "/api", "upstream": echo_upstream.url, "auth": "token"}],
        extra={"limits": {"max_header_bytes": 65536}},
    )


async def test_control_a_hand_signed_token_with_our_key_passes(
    gw: GatewayUnderTest, client_cert: Issued
) -> None:
    """Each forgery below differs from this token in one thing."""
    key = signing_key(gw)
    token = es256(
        {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, claims(client_cert), native(key)
    )
    assert (await call(gw, client_cert, "/api/x", bearer(token)))[0] == 200


# --- size ---------------------------------------------------------------------------


async def test_oversized_token_is_refused(gw: GatewayUnderTest, client_cert: Issued) -> None:
    key = signing_key(gw)
    padded = {**claims_for(client_cert), "pad": "x" * 12_000}
    token = es256(
        {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, json.dumps(padded).encode(), native(key)
    )
    assert len(token) > 8192
    # Validly signed by our own key: only its size is wrong.
    assert_invalid_token(await call(gw, client_cert, "/api/x", bearer(token)), "token too long")


async def test_oversized_token_stops_at_the_header_limit_by_default(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=[{"prefix": "/api", "upstream": echo_upstream.url, "auth": "token"}],
    )
    conn = await RawConnection.open(gw, client_cert)
    try:
        response = await conn.request(
            "GET /api/x HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {'A' * 9000}.{'B' * 10}.{'C' * 10}\r\n\r\n"
        )
    finally:
        await conn.close()
    assert response.status == 400  # max_header_bytes (8190): the parser refuses it


def test_oversized_token_is_refused_before_anything_is_decoded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = SigningKeySet([generate_signing_key(tmp_path / "k.pem", "ES256")])

    def must_not_run(*_: object, **__: object) -> None:
        raise AssertionError("an oversized token was decoded")

    # The very modules gateway/oauth/tokens.py calls into.
    monkeypatch.setattr(jws, "extract_compact", must_not_run)
    monkeypatch.setattr(jwt, "decode", must_not_run)
    huge = "A" * 1_000_000 + ".B.C"
    with pytest.raises(InvalidToken, match="token too long"):
        verify_access_token(keys, huge, issuer=ISSUER, audience=AUDIENCE)


# --- kid --------------------------------------------------------------------------

INJECTED_KIDS: list[tuple[Any, str]] = [
    ("../../../../../../etc/passwd", "unknown kid"),
    ("../signing.pem", "unknown kid"),
    ("signing.pem", "unknown kid"),
    ("' OR '1'='1", "unknown kid"),
    ('"}]},{"kid":"x', "unknown kid"),
    ("kid\u0000with-nul", "unknown kid"),
    ("|cat /etc/passwd", "unknown kid"),
    ("*", "unknown kid"),
    ("k" * 4000, "unknown kid|malformed token"),
    ("", "missing kid"),
    (None, "missing kid"),
    (1, "missing kid"),
    (["kid"], "missing kid"),
    ({"$ne": ""}, "missing kid"),
]


@pytest.mark.parametrize(
    ("kid", "reason"), INJECTED_KIDS, ids=[repr(k)[:30] for k, _ in INJECTED_KIDS]
)
async def test_injected_kid_is_just_an_unknown_name(
    gw: GatewayUnderTest, client_cert: Issued, kid: Any, reason: str
) -> None:
    key = signing_key(gw)
    if kid == "signing.pem" or kid == "../signing.pem":
        # The signing key's own file name and path: a kid is never a path.
        kid = str(gw.config_path.parent / "signing.pem") if kid == "signing.pem" else kid
    token = es256({"alg": "ES256", "typ": "at+jwt", "kid": kid}, claims(client_cert), native(key))
    assert_refused(await call(gw, client_cert, "/api/x", bearer(token)), reason)


# --- keys carried in the token ------------------------------------------------------


@pytest.fixture
async def key_server() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server serving the attacker's JWKS; records every fetch."""
    fetched: list[str] = []
    attacker = ec.generate_private_key(ec.SECP256R1())

    async def serve(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.json_response({"keys": [public_jwk(attacker, "attacker")]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", fetched
    await runner.cleanup()


@pytest.mark.parametrize(
    ("extra", "use_our_kid", "reason"),
    [
        ({"jwk": "attacker"}, False, "unknown kid"),
        ({"jwk": "attacker"}, True, "bad signature"),
        ({"jku": "/jwks.json"}, False, "unknown kid"),
        ({"jku": "/jwks.json"}, True, "bad signature"),
        ({"x5u": "/cert.pem"}, False, "unknown kid"),
        ({"x5c": "attacker"}, True, "bad signature|malformed token"),
    ],
    ids=["jwk", "jwk+our-kid", "jku", "jku+our-kid", "x5u", "x5c+our-kid"],
)
async def test_keys_named_or_embedded_in_the_token_are_never_used(
    gw: GatewayUnderTest,
    client_cert: Issued,
    key_server: tuple[str, list[str]],
    extra: dict[str, str],
    use_our_kid: bool,
    reason: str,
) -> None:
    base_url, fetched = key_server
    attacker = ec.generate_private_key(ec.SECP256R1())
    kid = signing_key(gw).kid if use_our_kid else "attacker"
    header: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    for name, value in extra.items():
        if name == "jwk":
            header["jwk"] = public_jwk(attacker, kid)
        elif name == "x5c":
            header["x5c"] = [base64.b64encode(client_cert.der).decode()]
        else:
            header[name] = base_url + value
    token = es256(header, claims(client_cert), attacker)
    assert_refused(await call(gw, client_cert, "/api/x", bearer(token)), reason)
    await asyncio.sleep(0.1)
    assert fetched == [], "the gateway fetched a key the token pointed at"


async def test_key_urls_in_our_own_tokens_are_ignored_not_fetched(
    gw: GatewayUnderTest, client_cert: Issued, key_server: tuple[str, list[str]]
) -> None:
    base_url, fetched = key_server
    key = signing_key(gw)
    header = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid, "jku": base_url + "/jwks.json"}
    token = es256(header, claims(client_cert), native(key))
    assert (await call(gw, client_cert, "/api/x", bearer(token)))[0] == 200
    assert fetched == []


# --- crit and nesting ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"crit": ["exp"], "exp": 1},
        {"crit": ["b64"], "b64": False},  # RFC 7797: the payload would not be base64url
        {"crit": ["urn:example:unknown"], "urn:example:unknown": True},
        {"crit": []},
    ],
)
async def test_crit_header_is_refused(
    gw: GatewayUnderTest, client_cert: Issued, header: dict[str, Any]
) -> None:
    key = signing_key(gw)
    full = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid, **header}
    token = es256(full, claims(client_cert), native(key))
    assert_invalid_token(
        await call(gw, client_cert, "/api/x", bearer(token)), "unsupported critical header"
    )


async def test_nested_jwt_is_not_unwrapped(gw: GatewayUnderTest, client_cert: Issued) -> None:
    key = signing_key(gw)
    inner = es256(
        {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, claims(client_cert), native(key)
    )
    # A valid token of ours as the payload of another JWS of ours (RFC 7519 §5.2 cty: JWT).
    outer = es256(
        {"alg": "ES256", "typ": "at+jwt", "kid": key.kid, "cty": "JWT"},
        inner.encode(),
        native(key),
    )
    assert_invalid_token(await call(gw, client_cert, "/api/x", bearer(outer)), "malformed token")


async def test_jwe_compact_token_is_not_a_jws(gw: GatewayUnderTest, client_cert: Issued) -> None:
    header = b64url(
        json.dumps({"alg": "dir", "enc": "A256GCM", "kid": signing_key(gw).kid}).encode()
    )
    jwe = f"{header}..{b64url(b'iv' * 6)}.{b64url(b'ciphertext')}.{b64url(b'tag' * 5)}"
    assert_invalid_token(await call(gw, client_cert, "/api/x", bearer(jwe)), "not a compact JWS")


def test_verification_keys_are_looked_up_by_name_only(tmp_path: Path) -> None:
    key = load_signing_key(generate_signing_key(tmp_path / "k.pem", "ES256").path)
    keys = SigningKeySet([key])
    near_misses = (
        str(key.path),
        str(tmp_path),
        "k.pem",
        key.kid.upper(),
        f"{key.kid} ",
        f" {key.kid}",
    )
    for kid in near_misses:
        assert keys.verification_key(kid) is None, kid
    found = keys.verification_key(key.kid)
    assert found is not None and found.kid == key.kid
