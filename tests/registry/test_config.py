"""gateway/registry/config.py: the ``registry:`` section, a YAML file or Redis with every option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.registry.factory import create_registry
from gateway.registry.redis_store import RedisRegistry
from tests.pki import Pki


def _config_file(tmp_path: Path, pki: Pki, registry: dict[str, Any]) -> Path:
    key = tmp_path / "signing.pem"
    if not key.exists():
        from gateway.oauth.keys import generate_signing_key

        generate_signing_key(key, "ES256")
    config = {
        "issuer": "https://gateway.test",
        "listeners": [
            {
                "bind": "127.0.0.1:0",
                "tls": {
                    "cert": str(pki.server.cert_path),
                    "key": str(pki.server.key_path),
                    "client_ca": str(pki.ca.cert_path),
                },
            }
        ],
        "registry": registry,
        "tokens": {"signing_keys": [str(key)]},
        "routes": [{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_reads_every_redis_option(tmp_path: Path, pki: Pki) -> None:
    path = _config_file(
        tmp_path,
        pki,
        {
            "kind": "redis",
            "url": "rediss://app:from-url@redis.internal:6380/2",
            "key_prefix": "{edge}:",
            "max_stale": 0,
            "cache_size": 50,
            "password": "from-config",
            "tls": {
                "ca": str(pki.ca.cert_path),
                "cert": str(pki.server.cert_path),
                "key": str(pki.server.key_path),
            },
            "cluster": True,
            "connect_timeout": 0.5,
            "command_timeout": 1,
        },
    )
    config = load_config(path, env={"MTLS_GATEWAY_REGISTRY__PASSWORD": "from-env"}).registry
    assert config.kind == "redis" and config.url == "rediss://app:from-url@redis.internal:6380/2"
    assert (config.key_prefix, config.max_stale, config.cache_size) == ("{edge}:", 0.0, 50)
    assert config.password == "from-env"
    assert config.tls_ca == pki.ca.cert_path and config.tls_key == pki.server.key_path
    assert config.cluster and (config.connect_timeout, config.command_timeout) == (0.5, 1.0)
    registry = create_registry(config)
    assert isinstance(registry, RedisRegistry)
    assert "from-url" not in registry.description and "cluster" in registry.description


def test_config_reads_sentinel(tmp_path: Path, pki: Pki) -> None:
    path = _config_file(
        tmp_path,
        pki,
        {
            "kind": "redis",
            "url": "redis://mymaster/0",
            "sentinel": {
                "master": "mymaster",
                "nodes": ["10.0.0.1:26379", "sentinel-2:26379"],
                "password": "s",
            },
        },
    )
    config = load_config(path, env={}).registry
    assert config.sentinel_master == "mymaster"
    assert config.sentinel_nodes == (("10.0.0.1", 26379), ("sentinel-2", 26379))
    assert config.sentinel_password == "s" and config.max_stale == 60.0
    assert "sentinel master mymaster" in create_registry(config).description


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ({"kind": "redis"}, "registry.url: required"),
        ({"kind": "redis", "url": "http://x"}, "registry.url: expected a redis://"),
        ({"kind": "redis", "url": "redis://x/zero"}, "registry.url: the path must be a database"),
        ({"kind": "redis", "url": "redis://x", "tls": {"ca": "ca.pem"}}, "need a rediss:// URL"),
        ({"kind": "redis", "url": "redis://x", "cluster": True}, "registry.key_prefix: a cluster"),
        ({"kind": "redis", "url": "redis://x", "key_prefix": ""}, "registry.key_prefix: must not"),
        ({"kind": "redis", "url": "redis://x", "max_stale": -1}, "registry.max_stale: expected"),
        (
            {"kind": "redis", "url": "redis://x", "sentinel": {"master": "m", "nodes": []}},
            "registry.sentinel.nodes: required",
        ),
        (
            {
                "kind": "redis",
                "url": "redis://x",
                "key_prefix": "{a}:",
                "cluster": True,
                "sentinel": {"master": "m", "nodes": ["h:1"]},
            },
            "registry.cluster: choose one of sentinel and cluster",
        ),
        ({"kind": "redis", "url": "redis://x", "sentinels": []}, "registry.sentinels: unknown"),
    ],
)
def test_config_refuses_bad_redis_settings(
    tmp_path: Path, pki: Pki, registry: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config_file(tmp_path, pki, registry), env={})
    assert any(message in p for p in caught.value.problems), caught.value.problems


def test_yaml_kind_ignores_the_redis_keys(tmp_path: Path, pki: Pki) -> None:
    clients = tmp_path / "clients.yaml"
    clients.write_text("clients: []\n")
    path = _config_file(
        tmp_path,
        pki,
        {"kind": "yaml", "path": str(clients), "url": "redis://127.0.0.1:6379/0"},
    )
    config = load_config(path, env={}).registry
    assert config.kind == "yaml" and config.url is None


def test_config_accepts_a_unix_socket(tmp_path: Path, pki: Pki) -> None:
    path = _config_file(tmp_path, pki, {"kind": "redis", "url": "unix:///run/redis/redis.sock"})
    assert load_config(path, env={}).registry.url == "unix:///run/redis/redis.sock"


def test_an_unknown_kind_is_refused(tmp_path: Path, pki: Pki) -> None:
    path = _config_file(tmp_path, pki, {"kind": "ldap"})
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == [
        f"{path}:registry.kind: expected one of yaml, redis, got 'ldap'"
    ]
