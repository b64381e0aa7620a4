"""Signing keys in a running gateway: rotation, reload on change, and refusal at start."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.cli.main import main
from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.oauth.keys import generate_signing_key, load_signing_key
from gateway.runtime import assemble
from tests.conftest import MakeGateway, Upstream, name_secret, registry_client, write_config
from tests.pki import Issued, Pki

# joserfc flags "EdDSA" (RFC 9864); see tests/oauth/test_keys.py.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

CLIENT_DN = "CN=client, OU=production, O=company"
GRANT = {"grant_type": "client_credentials", "client_id": "mtls.client"}


def routes(upstream: Upstream) -> list[dict[str, Any]]:
    return [{"prefix": "/", "upstream": upstream.url, "auth": "token", "scopes": ["api1"]}]


def tokens_config(*keys: Path) -> dict[str, Any]:
    return {"tokens": {"signing_keys": [str(k) for k in keys], "lifetime": 300}}


async def issue(gw: Any, cert: Issued) -> str:
    async with (
        gw.session(cert) as session,
        session.post(gw.url + "/connect/token", data=GRANT) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["access_token"])


async def use(gw: Any, cert: Issued, token: str) -> tuple[int, str]:
    async with (
        gw.session(cert) as session,
        session.get(gw.url + "/api", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, r.headers.get("WWW-Authenticate", "")


async def published_kids(gw: Any) -> list[str]:
    async with (
        gw.session(None) as session,
        session.get(gw.url + "/.well-known/openid-configuration/jwks") as resp,
    ):
        return [key["kid"] for key in (await resp.json())["keys"]]


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_token_signed_by_the_previous_key_verifies_after_rotation(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued, tmp_path: Path
) -> None:
    """A new key goes first (it signs), the old one stays published: live tokens keep working."""
    old = generate_signing_key(tmp_path / "old.pem", "ES256")
    new = generate_signing_key(tmp_path / "new.pem", "RS256")
    clients = [registry_client("mtls.client", name_secret(CLIENT_DN))]
    before = await make_gateway(
        clients=clients, routes=routes(echo_upstream), extra=tokens_config(old.path)
    )
    old_token = await issue(before, client_cert)
    assert kid_of(old_token) == old.kid

    after = await make_gateway(
        clients=clients, routes=routes(echo_upstream), extra=tokens_config(new.path, old.path)
    )
    assert await published_kids(after) == [new.kid, old.kid]
    assert (await use(after, client_cert, old_token))[0] == 200
    new_token = await issue(after, client_cert)
    assert kid_of(new_token) == new.kid
    assert jwt.get_unverified_header(new_token)["alg"] == "RS256"
    assert (await use(after, client_cert, new_token))[0] == 200


async def test_rewritten_key_file_is_picked_up_on_reload(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=routes(echo_upstream),
    )
    key_path = gw.config_path.parent / "signing.pem"
    first = await issue(gw, client_cert)

    replacement = generate_signing_key(key_path, "EdDSA", overwrite=True)
    assert await gw.gateway.reload()  # what SIGHUP runs; the 1 s poll runs the same reloader
    assert await published_kids(gw) == [replacement.kid]
    second = await issue(gw, client_cert)
    assert kid_of(second) == replacement.kid
    assert (await use(gw, client_cert, second))[0] == 200
    # The old key was replaced, not added: its tokens are gone with it.
    status, challenge = await use(gw, client_cert, first)
    assert status == 401 and 'error_description="unknown kid"' in challenge


async def test_key_file_change_is_noticed_by_polling(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[registry_client("mtls.client", name_secret(CLIENT_DN))])
    replacement = generate_signing_key(gw.config_path.parent / "signing.pem", overwrite=True)
    for _ in range(50):
        if kid_of(await issue(gw, client_cert)) == replacement.kid:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the rewritten key file was not picked up within 5 s")


async def test_broken_key_file_keeps_the_current_key(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=routes(echo_upstream),
    )
    key_path = gw.config_path.parent / "signing.pem"
    current = load_signing_key(key_path).kid
    token = await issue(gw, client_cert)
    key_path.write_text("-----BEGIN PRIVATE KEY-----\ntruncated\n")  # a half-written Secret
    assert not await gw.gateway.reload()
    assert kid_of(await issue(gw, client_cert)) == current
    assert (await use(gw, client_cert, token))[0] == 200
    assert await published_kids(gw) == [current]


# -- refusing to start -------------------------------------------------------------


def config_with_keys(tmp_path: Path, pki: Pki, *keys: Path, **tokens: Any) -> Path:
    config_path, _ = write_config(
        tmp_path,
        pki,
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=[{"prefix": "/", "upstream": "http://127.0.0.1:9", "auth": "client"}],
        extra={"tokens": {"signing_keys": [str(k) for k in keys], **tokens}},
    )
    return config_path


def test_bad_keys_are_config_errors_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    good = generate_signing_key(tmp_path / "good.pem")
    readable = generate_signing_key(tmp_path / "readable.pem")
    os.chmod(readable.path, 0o644)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    config_path = config_with_keys(tmp_path, pki, good.path, readable.path, garbage, good.path)

    with pytest.raises(ConfigError) as info:
        assemble(load_config(config_path, env={}))
    where = f"{config_path}:tokens.signing_keys"
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{where}[1]: {readable.path}: permissions 0644")
    assert problems[1] == f"{where}[2]: {garbage}: not a PEM file (no -----BEGIN line)"
    assert problems[2] == f"{where}[3]: {good.path}: same key as signing_keys[0]"


def test_insecure_permissions_can_be_allowed(tmp_path: Path, pki: Pki) -> None:
    readable = generate_signing_key(tmp_path / "readable.pem")
    os.chmod(readable.path, 0o640)
    config_path = config_with_keys(
        tmp_path, pki, readable.path, allow_insecure_key_permissions=True
    )
    gateway = assemble(load_config(config_path, env={}))
    assert gateway.token_checker is not None


def test_check_command_reports_the_key_line(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    readable = generate_signing_key(tmp_path / "readable.pem")
    os.chmod(readable.path, 0o604)
    config_path = config_with_keys(tmp_path, pki, readable.path)
    assert main(["check", "--config", str(config_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mtls-gateway: {config_path}:tokens.signing_keys[0]: {readable.path}:")
    assert "Traceback" not in err
