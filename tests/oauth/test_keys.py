"""Signing keys: generation, loading, refusal of unsafe files, kid, reload."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import RSAKey

from gateway.oauth.keys import (
    ALGORITHMS,
    SigningKeyError,
    SigningKeySet,
    generate_signing_key,
    key_id,
    load_signing_key,
)

# joserfc flags "EdDSA" (RFC 9864); gateway.oauth.keys silences it at import,
# but pytest restores warning filters around collection, so repeat it here.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return path


def pkcs8(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_generate_then_load(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "signing.pem"
    made = generate_signing_key(path, alg)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.splitlines()[0] == f"# alg: {alg}"
    assert "-----BEGIN PRIVATE KEY-----" in text  # PKCS#8, unencrypted

    loaded = load_signing_key(path)
    assert (loaded.alg, loaded.kid, loaded.path) == (alg, made.kid, path)
    assert loaded.public_jwk == made.public_jwk
    jwk = loaded.public_jwk
    assert jwk["kid"] == loaded.kid and jwk["alg"] == alg and jwk["use"] == "sig"
    assert not PRIVATE_JWK_MEMBERS & jwk.keys()
    secret = loaded.private_key.as_dict(private=True)["d"]
    assert isinstance(secret, str) and secret not in repr(loaded)  # no key material in reprs


def test_kid_is_rfc7638_thumbprint_of_ec_key(tmp_path: Path) -> None:
    raw = ec.generate_private_key(ec.SECP256R1())
    path = write_private(tmp_path / "ec.pem", pkcs8(raw))
    numbers = raw.public_key().public_numbers()
    # RFC 7638 §3.2: required members only, lexicographic order, no whitespace.
    canonical = json.dumps(
        {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    expected = b64url(hashlib.sha256(canonical.encode("ascii")).digest())
    key = load_signing_key(path)
    assert key.kid == expected
    assert key.alg == "ES256"  # inferred: no "# alg:" line


def test_kid_matches_rfc7638_section_3_1_example() -> None:
    example = RSAKey.import_key(
        {
            "kty": "RSA",
            "n": (
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
                "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
                "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
                "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
                "Cur-kEgU8awapJzKnqDKgw"
            ),
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        }
    )
    assert key_id(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rsa_alg_survives_reload_and_is_inferred_without_header(tmp_path: Path) -> None:
    ps = generate_signing_key(tmp_path / "ps.pem", "PS256")
    assert load_signing_key(ps.path).alg == "PS256"

    bare = tmp_path / "bare.pem"
    body = ps.path.read_text().split("\n", 1)[1]  # drop the "# alg:" line
    write_private(bare, body.encode())
    key = load_signing_key(bare)
    assert key.alg == "RS256" and key.kid == ps.kid


def test_alg_line_that_does_not_fit_the_key_is_refused(tmp_path: Path) -> None:
    ec_key = generate_signing_key(tmp_path / "ec.pem", "ES256")
    body = ec_key.path.read_text().split("\n", 1)[1]
    path = write_private(tmp_path / "mismatch.pem", ("# alg: RS256\n" + body).encode())
    with pytest.raises(SigningKeyError, match=r"mismatch\.pem: '# alg: RS256' does not fit"):
        load_signing_key(path)
    path = write_private(tmp_path / "unknown.pem", ("# alg: HS256\n" + body).encode())
    with pytest.raises(SigningKeyError, match="unknown alg 'HS256'"):
        load_signing_key(path)


def test_group_or_world_access_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    made = generate_signing_key(path)
    for mode in (0o644, 0o640, 0o602):
        os.chmod(path, mode)
        with pytest.raises(SigningKeyError, match=rf"signing\.pem: permissions {mode:04o}"):
            load_signing_key(path)
        with pytest.raises(SigningKeyError):
            SigningKeySet.load([path])
    assert load_signing_key(path, allow_insecure_permissions=True).kid == made.kid
    assert SigningKeySet.load([path], allow_insecure_permissions=True).signing_key.kid == made.kid


def test_existing_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    first = generate_signing_key(path)
    before = path.read_bytes()
    with pytest.raises(SigningKeyError, match=r"signing\.pem: already exists"):
        generate_signing_key(path, "EdDSA")
    assert path.read_bytes() == before

    second = generate_signing_key(path, "EdDSA", overwrite=True)
    assert second.kid != first.kid and second.alg == "EdDSA"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path).kid == second.kid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.pem"]  # no temp left


def test_generate_refuses_unknown_algorithm(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="unsupported alg 'HS256'"):
        generate_signing_key(tmp_path / "k.pem", "HS256")
    assert not (tmp_path / "k.pem").exists()


def test_unusable_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    cases: dict[str, tuple[bytes, str]] = {
        "empty.pem": (b"", "file is empty"),
        "garbage.pem": (b"hello\n", "not a PEM file"),
        "broken.pem": (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a PEM private key",
        ),
        "encrypted.pem": (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "key is encrypted",
        ),
        "p384.pem": (
            pkcs8(ec.generate_private_key(ec.SECP384R1())),
            "EC curve secp384r1 is not supported",
        ),
        "rsa1024.pem": (
            pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505 (must be refused)
            "too small",
        ),
        "public.pem": (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "not a PEM private key",
        ),
    }
    for name, (data, reason) in cases.items():
        path = write_private(tmp_path / name, data)
        with pytest.raises(SigningKeyError) as info:
            load_signing_key(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and reason in message, message
        assert "\n" not in message

    with pytest.raises(SigningKeyError, match=r"missing\.pem: no such file"):
        load_signing_key(tmp_path / "missing.pem")
    with pytest.raises(SigningKeyError, match="not a regular file"):
        load_signing_key(tmp_path)


def test_key_set_publishes_all_and_signs_with_first(tmp_path: Path) -> None:
    a = generate_signing_key(tmp_path / "a.pem", "ES256")
    b = generate_signing_key(tmp_path / "b.pem", "EdDSA")
    keys = SigningKeySet.load([b.path, a.path])
    assert keys.signing_key.kid == b.kid
    assert [k["kid"] for k in keys.jwks()["keys"]] == [b.kid, a.kid]
    assert keys.verification_key(a.kid) == a
    assert keys.verification_key("nope") is None

    keys.jwks()["keys"][0]["kid"] = "mutated"  # callers get copies
    assert keys.jwks()["keys"][0]["kid"] == b.kid

    with pytest.raises(SigningKeyError, match="no signing key"):
        SigningKeySet([])
    with pytest.raises(SigningKeyError, match="same key as"):
        SigningKeySet.load([a.path, a.path])


def test_reload_picks_up_a_replaced_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    old = generate_signing_key(path)
    keys = SigningKeySet.load([path])
    assert keys.watched_files() == (path,)
    assert keys.reload() is True and keys.signing_key.kid == old.kid  # unchanged: same key

    new = generate_signing_key(path, overwrite=True)  # rename: new inode
    assert keys.reload() is True
    assert keys.signing_key.kid == new.kid != old.kid
    assert keys.verification_key(old.kid) is None
    assert (keys.reloads_ok, keys.reload_failures) == (2, 0)


def test_failed_reload_keeps_the_running_keys(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    original = generate_signing_key(path)
    keys = SigningKeySet.load([path])
    jwks_before = keys.jwks()

    with open(path, "r+b") as fh:  # a half-written Secret: same inode, truncated
        fh.truncate(40)
    assert keys.reload() is False
    assert keys.failing and keys.reload_failures == 1
    assert keys.signing_key.kid == original.kid
    assert keys.jwks() == jwks_before

    path.unlink()
    assert keys.reload() is False
    assert keys.reload_failures == 2  # another error: counted (and logged) again
    assert keys.signing_key is not None and keys.signing_key.kid == original.kid

    generate_signing_key(path)  # the operator fixes it: next reload succeeds
    assert keys.reload() is True
    assert not keys.failing and keys.signing_key.kid != original.kid
