"""Access tokens: RFC 9068 shape, RFC 8705 binding, and what verification refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt  # PyJWT: an independent implementation to check our tokens against
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.oauth.keys import ALGORITHMS, SigningKey, SigningKeySet, generate_signing_key
from gateway.oauth.tokens import (
    InvalidToken,
    IssuedToken,
    cnf_x5t_s256,
    mint_access_token,
    scopes_of,
    verify_access_token,
)
from gateway.trust.identity import x5t_s256

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

ISSUER = "https://gateway.example"
AUDIENCE = "api1"
CLIENT = "mtls.client"
NOW = 1_700_000_000

# RFC 8705 Appendix A, Figure 6: the certificate whose x5t#S256 is the
# confirmation claim of Figure 5.
RFC8705_CERT_B64 = (
    "MIIBBjCBrAIBAjAKBggqhkjOPQQDAjAPMQ0wCwYDVQQDDARtdGxzMB4XDTE4MTAx"
    "ODEyMzcwOVoXDTIyMDUwMjEyMzcwOVowDzENMAsGA1UEAwwEbXRsczBZMBMGByqG"
    "SM49AgEGCCqGSM49AwEHA0IABNcnyxwqV6hY8QnhxxzFQ03C7HKW9OylMbnQZjjJ"
    "/Au08/coZwxS7LfA4vOLS9WuneIXhbGGWvsDSb0tH6IxLm8wCgYIKoZIzj0EAwID"
    "SQAwRgIhAP0RC1E+vwJD/D1AGHGzuri+hlV/PpQEKTWUVeORWz83AiEA5x2eXZOV"
    "bUlJSGQgjwD5vaUaKlLR50Q2DmFfQj1L+SY="
)
RFC8705_X5T_S256 = "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def native_key(
    key: SigningKey,
) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    native = key.private_key.private_key
    assert isinstance(
        native, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    )
    return native


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    """One key per algorithm, made once: RSA-3072 generation is slow."""
    root = tmp_path_factory.mktemp("keys")
    return {alg: generate_signing_key(root / f"{alg}.pem", alg) for alg in ALGORITHMS}


@pytest.fixture
def keys(key_files: dict[str, SigningKey]) -> SigningKeySet:
    return SigningKeySet.load([key_files["ES256"].path])


def mint(keys: SigningKeySet, **overrides: Any) -> IssuedToken:
    args: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_id": CLIENT,
        "scopes": ["api1", "api1.read"],
        "lifetime": 3600,
        "x5t_s256": RFC8705_X5T_S256,
        "now": NOW,
    }
    args.update(overrides)
    return mint_access_token(keys, **args)


def verify(keys: SigningKeySet, token: str, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "now": NOW + 10}
    args.update(overrides)
    return verify_access_token(keys, token, **args)


def refused(keys: SigningKeySet, token: str, reason: str, **overrides: Any) -> None:
    with pytest.raises(InvalidToken) as info:
        verify(keys, token, **overrides)
    assert info.value.reason == reason
    if len(token) > 16:
        assert token not in str(info.value)  # never echo the credential


def claims_for(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": CLIENT,
        "client_id": CLIENT,
        "aud": AUDIENCE,
        "scope": "api1",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 3600,
        "jti": "abcdefghijklmnopqrstuv",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
def sign_with_pyjwt(keys: SigningKeySet) -> Callable[..., str]:
    """Sign arbitrary claims/headers with our key, independently of the code
    under test, to reach the checks that come after the signature."""

    def sign(claims: dict[str, Any], typ: str | None = "at+jwt", **headers: Any) -> str:
        key = keys.signing_key
        native = native_key(key)
        hdrs: dict[str, Any] = {"kid": key.kid, "typ": typ, **headers}
        # PyJWS signs raw bytes: no claim checks, so malformed claims get through.
        payload = json.dumps(claims).encode()
        return jwt.PyJWS().encode(payload, native, algorithm=key.alg, headers=hdrs)

    return sign


# -- issuing ---------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_yields_a_token_pyjwt_verifies(
    key_files: dict[str, SigningKey], alg: str
) -> None:
    keys = SigningKeySet.load([key_files[alg].path])
    issued = mint(keys, now=None)

    header = jwt.get_unverified_header(issued.token)
    assert header == {"typ": "at+jwt", "alg": alg, "kid": key_files[alg].kid}
    jwk = jwt.PyJWK(keys.jwks()["keys"][0])
    claims = jwt.decode(
        issued.token,
        jwk,
        algorithms=[alg],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "nbf", "sub", "jti"]},
    )
    assert claims == issued.claims
    assert verify(keys, issued.token, now=None) == issued.claims


def test_claims_follow_rfc_9068(keys: SigningKeySet) -> None:
    issued = mint(keys, scopes=["api1", "api1.read", "api1"])
    c = issued.claims
    assert c["iss"] == ISSUER and c["aud"] == AUDIENCE
    assert c["sub"] == c["client_id"] == CLIENT
    assert (c["iat"], c["nbf"], c["exp"]) == (NOW, NOW, NOW + 3600)
    assert c["scope"] == "api1 api1.read"  # RFC 9068 §2.2.3, de-duplicated
    assert issued.scope == "api1 api1.read" and issued.expires_in == 3600
    assert c["jti"] == issued.jti and len(base64.urlsafe_b64decode(issued.jti + "==")) >= 16
    assert mint(keys).jti != issued.jti
    assert issued.token not in repr(issued)


def test_scope_as_array_for_identityserver_consumers(keys: SigningKeySet) -> None:
    issued = mint(keys, scope_format="array")
    assert issued.claims["scope"] == ["api1", "api1.read"]
    assert issued.scope == "api1 api1.read"  # the token response is always a string
    claims = verify(keys, issued.token)
    assert scopes_of(claims) == {"api1", "api1.read"}


def test_cnf_binds_the_certificate(keys: SigningKeySet) -> None:
    issued = mint(keys)
    assert issued.claims["cnf"] == {"x5t#S256": RFC8705_X5T_S256}
    assert cnf_x5t_s256(verify(keys, issued.token)) == RFC8705_X5T_S256

    unbound = mint(keys, x5t_s256=None)
    assert "cnf" not in unbound.claims
    assert cnf_x5t_s256(verify(keys, unbound.token)) is None


def test_rfc8705_appendix_a_thumbprint() -> None:
    der = base64.b64decode(RFC8705_CERT_B64)
    assert x5t_s256(der) == RFC8705_X5T_S256


def test_extra_claims_cannot_override_registered_ones(keys: SigningKeySet) -> None:
    issued = mint(keys, extra_claims={"tenant": "blue"})
    assert issued.claims["tenant"] == "blue"
    for name in ("sub", "cnf", "exp", "scope"):
        with pytest.raises(ValueError, match=name):
            mint(keys, extra_claims={name: "x"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"scopes": ["has space"]},
        {"scopes": ["api1", '"quoted"']},
        {"scopes": "api1"},
        {"x5t_s256": "not-a-thumbprint"},
        {"lifetime": 0},
        {"audience": []},
        {"client_id": ""},
        {"scope_format": "csv"},
    ],
)
def test_bad_mint_arguments_are_refused(keys: SigningKeySet, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        mint(keys, **overrides)


def test_rotation_keeps_old_tokens_valid(key_files: dict[str, SigningKey]) -> None:
    old, new = key_files["ES256"], key_files["EdDSA"]
    before = SigningKeySet.load([old.path])
    old_token = mint(before).token

    after = SigningKeySet.load([new.path, old.path])  # new key first: it signs
    assert verify(after, old_token)["client_id"] == CLIENT
    new_token = mint(after).token
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    assert verify(after, new_token)["client_id"] == CLIENT
    refused(before, new_token, "unknown kid")  # not published by the old set


# -- verification refuses ---------------------------------------------------


def test_alg_none_is_refused(keys: SigningKeySet) -> None:
    header = {"typ": "at+jwt", "alg": "none", "kid": keys.signing_key.kid}
    unsigned = f"{b64json(header)}.{b64json(claims_for())}."
    refused(keys, unsigned, "not a compact JWS")
    refused(keys, unsigned + "c2ln", "algorithm not allowed")


def test_hs256_keyed_with_the_public_key_is_refused(keys: SigningKeySet) -> None:
    # The classic confusion: a verifier that lets the token pick the algorithm
    # would check this HMAC with the published key as the secret.
    native = keys.signing_key.private_key.private_key
    assert native is not None
    public_pem = native.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"typ": "at+jwt", "alg": "HS256", "kid": keys.signing_key.kid}
    signing_input = f"{b64json(header)}.{b64json(claims_for())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    refused(keys, f"{signing_input}.{b64url(mac)}", "algorithm not allowed")


def test_unknown_kid_and_kid_of_another_set_are_refused(
    keys: SigningKeySet, key_files: dict[str, SigningKey]
) -> None:
    token = mint(keys).token
    head, payload, sig = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    refused(keys, f"{b64json({**header, 'kid': 'other'})}.{payload}.{sig}", "unknown kid")
    del header["kid"]
    refused(keys, f"{b64json(header)}.{payload}.{sig}", "missing kid")

    other_set = SigningKeySet.load([key_files["PS256"].path])
    refused(keys, mint(other_set).token, "unknown kid")


def test_foreign_signature_under_our_kid_is_refused(keys: SigningKeySet, tmp_path: Path) -> None:
    intruder = generate_signing_key(tmp_path / "intruder.pem", "ES256")
    headers = {"kid": keys.signing_key.kid, "typ": "at+jwt"}
    forged = jwt.encode(claims_for(), native_key(intruder), algorithm="ES256", headers=headers)
    refused(keys, forged, "bad signature")


def test_tampered_payload_is_refused(keys: SigningKeySet) -> None:
    head, _, sig = mint(keys, scopes=["api1"]).token.split(".")
    forged = claims_for(scope="api1 admin", cnf={"x5t#S256": RFC8705_X5T_S256})
    refused(keys, f"{head}.{b64json(forged)}.{sig}", "bad signature")


def test_time_window_with_leeway(keys: SigningKeySet) -> None:
    token = mint(keys, lifetime=600).token
    verify(keys, token, now=NOW + 600 + 29)  # inside the 30 s leeway
    refused(keys, token, "token expired", now=NOW + 600 + 31)
    refused(keys, token, "token expired", now=NOW + 600 + 1, leeway=0)
    verify(keys, token, now=NOW - 29)
    refused(keys, token, "token issued in the future", now=NOW - 31)


def test_nbf_in_the_future_is_refused(
    keys: SigningKeySet, sign_with_pyjwt: Callable[..., str]
) -> None:
    token = sign_with_pyjwt(claims_for(nbf=NOW + 300))
    refused(keys, token, "token not yet valid")
    verify(keys, token, now=NOW + 300)


def test_wrong_issuer_and_audience_are_refused(
    keys: SigningKeySet, sign_with_pyjwt: Callable[..., str]
) -> None:
    token = mint(keys).token
    refused(keys, token, "wrong issuer", issuer="https://other.example")
    refused(keys, token, "wrong audience", audience="api2")

    multi = mint(keys, audience=["api2", AUDIENCE]).token
    assert verify(keys, multi)["aud"] == ["api2", AUDIENCE]
    refused(keys, multi, "wrong audience", audience="api3")
    # joserfc matches lists loosely; an issuer must be the string itself.
    refused(keys, sign_with_pyjwt(claims_for(iss=[ISSUER])), "wrong issuer")


@pytest.mark.parametrize("claim", ["iat", "exp", "sub", "client_id", "jti", "iss", "aud"])
def test_missing_required_claim_is_refused(
    keys: SigningKeySet, sign_with_pyjwt: Callable[..., str], claim: str
) -> None:
    refused(keys, sign_with_pyjwt(claims_for(**{claim: None})), f"missing claim: {claim}")


def test_malformed_claims_are_refused(
    keys: SigningKeySet, sign_with_pyjwt: Callable[..., str]
) -> None:
    refused(keys, sign_with_pyjwt(claims_for(exp=True)), "invalid claim: exp")
    refused(keys, sign_with_pyjwt(claims_for(exp="never")), "invalid claim: exp")
    refused(keys, sign_with_pyjwt(claims_for(sub=["a"])), "invalid claim: sub")
    refused(keys, sign_with_pyjwt(claims_for(scope=7)), "invalid claim: scope")
    refused(keys, sign_with_pyjwt(claims_for(cnf="x")), "invalid claim: cnf")


@pytest.mark.parametrize("typ", [None, "JWT", "at+JWT-ish", "application/jwt"])
def test_wrong_typ_is_refused(
    keys: SigningKeySet, sign_with_pyjwt: Callable[..., str], typ: str | None
) -> None:
    refused(keys, sign_with_pyjwt(claims_for(), typ=typ), "wrong token type")


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_typ_forms_accepted(
    keys: SigningKeySet, sign_with_pyjwt: Callable[..., str], typ: str
) -> None:
    assert verify(keys, sign_with_pyjwt(claims_for(), typ=typ))["sub"] == CLIENT


def test_oversized_and_malformed_tokens_are_refused(keys: SigningKeySet) -> None:
    token = mint(keys, extra_claims={"pad": "x" * 9000}).token
    refused(keys, token, "token too long")
    verify(keys, token, max_length=20_000)
    refused(keys, mint(keys).token, "token too long", max_length=100)

    for bad in ["", "abc", "a.b", "a.b.c.d.e", "a..c", "a b.c.d", "é.b.c"]:
        refused(keys, bad, "not a compact JWS")
    refused(keys, "eyJ.e30.c2ln", "malformed token")  # header is not JSON


def test_scopes_of_accepts_string_and_array() -> None:
    assert scopes_of({"scope": "a b  c"}) == {"a", "b", "c"}
    assert scopes_of({"scope": ["a", "b"]}) == {"a", "b"}
    assert scopes_of({}) == frozenset()
    with pytest.raises(InvalidToken):
        scopes_of({"scope": ["a", 1]})


def test_tokens_verify_across_real_time(keys: SigningKeySet) -> None:
    issued = mint(keys, now=None)
    assert abs(issued.claims["iat"] - time.time()) < 5
    assert verify(keys, issued.token, now=None)["jti"] == issued.jti
