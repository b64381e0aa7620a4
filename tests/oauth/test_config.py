"""gateway/oauth/config.py: the ``tokens:`` section."""

from __future__ import annotations

from pathlib import Path

from gateway.config.load import load_config
from tests.spec_example import config_problems, config_with


def test_signing_keys_are_required(spec_config: Path, tmp_path: Path) -> None:
    path = config_with(spec_config, tmp_path, {"tokens": {"signing_keys": [], "lifetime": 60}})
    assert config_problems(path) == [
        f"{path}:tokens.signing_keys: required: at least one signing key file "
        "(mtls-gateway keys generate FILE)"
    ]


def test_one_key_may_be_a_string_and_the_audience_follows_the_issuer(
    spec_config: Path, tmp_path: Path
) -> None:
    path = config_with(spec_config, tmp_path, {"tokens": {"signing_keys": "keys/signing.pem"}})
    tokens = load_config(path, env={}).tokens
    assert tokens.signing_keys == (spec_config.parent.absolute() / "keys" / "signing.pem",)
    assert (tokens.lifetime, tokens.scope_format) == (3600, "string")
    assert tokens.audience == "https://localhost:8443/resources"
