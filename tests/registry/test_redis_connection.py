"""Redis access as the documented ACL users, and permission errors as one line.

The ACL lines are read from docs/redis.md, so the documentation cannot drift
from what is tested.  Before, the cluster ACL lacked ``+cluster|slots`` and
``check`` / ``clients import`` ended in a traceback reading "Cluster mode is
not enabled on this node" (RedisClusterException is not a RedisError).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml

from gateway.registry.redis_store import RedisRegistry
from tests.cli.test_main import REPO, error_lines, run_cli
from tests.pki import Issued
from tests.registry.conftest import RedisServer, command
from tests.registry.test_redis_store import (  # noqa: F401 - fixtures
    _two_replicas_agree,
    cluster_node,
    registry_config,
    san_cert,
)
from tests.spec_example import write_spec_example

DOCS = REPO / "docs" / "redis.md"
CLUSTER_PREFIX = "{mtls-gateway}:"
PASSWORD = "s3cret"  # a throwaway test server's ACL user


def documented_acl(*, cluster: bool) -> list[str]:
    """The ACL SETUSER line of docs/redis.md for a plain or a cluster deployment."""
    lines = re.findall(r"^ACL SETUSER .*$", DOCS.read_text(encoding="utf-8"), re.M)
    (line,) = [line for line in lines if ("+cluster|slots" in line) == cluster]
    return shlex.split(line)


async def _as_user(node: RedisServer, acl: list[str]) -> None:
    raw = aioredis.Redis(port=node.port)
    try:
        words = [w if not w.startswith(">") else f">{PASSWORD}" for w in acl[2:]]
        await command(raw, "ACL", "SETUSER", *words)
        await command(raw, "ACL", "SETUSER", "default", "off")
    finally:
        await raw.aclose()


async def test_the_documented_cluster_acl_runs_the_registry(
    cluster_node: RedisServer,  # noqa: F811
    san_cert: Issued,  # noqa: F811
) -> None:
    await _as_user(cluster_node, documented_acl(cluster=True))
    url = f"redis://gateway:s3cret@127.0.0.1:{cluster_node.port}"
    options: dict[str, Any] = {"cluster": True, "key_prefix": CLUSTER_PREFIX}
    writer = RedisRegistry(registry_config(url, **options))
    replica = RedisRegistry(registry_config(url, **options))
    await replica.start()
    try:
        await _two_replicas_agree(writer, replica, san_cert)
    finally:
        await writer.close()
        await replica.close()


def _cluster_config(tmp_path: Path, port: int) -> Path:
    config = write_spec_example(tmp_path / "conf")
    data = yaml.safe_load(config.read_text())
    data["registry"] = {
        "kind": "redis",
        "url": f"redis://gateway:s3cret@127.0.0.1:{port}",
        "cluster": True,
        "key_prefix": CLUSTER_PREFIX,
    }
    config.write_text(yaml.safe_dump(data))
    return config


async def test_without_cluster_slots_check_and_import_say_so_in_one_line(
    cluster_node: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    acl = [w for w in documented_acl(cluster=True) if w != "+cluster|slots"]
    await _as_user(cluster_node, acl)
    config = _cluster_config(tmp_path, cluster_node.port)
    (line,) = error_lines(run_cli("check", "--config", config))
    assert "+cluster|slots" in line and line.startswith("registry unavailable: redis cluster")
    registry_file = config.parent / "clients.yaml"
    (line,) = error_lines(run_cli("clients", "import", registry_file, "--config", config))
    assert "+cluster|slots" in line


async def test_a_refused_command_is_one_line(redis_server: RedisServer, tmp_path: Path) -> None:
    # The plain ACL without +@scripting: every write is a Lua script.
    acl = [w for w in documented_acl(cluster=False) if w != "+@scripting"]
    await _as_user(redis_server, acl)
    config = write_spec_example(tmp_path / "conf")
    data = yaml.safe_load(config.read_text())
    url = f"redis://gateway:s3cret@127.0.0.1:{redis_server.port}/0"
    data["registry"] = {"kind": "redis", "url": url, "key_prefix": "mtls-gateway:"}
    config.write_text(yaml.safe_dump(data))
    registry_file = config.parent / "clients.yaml"
    (line,) = error_lines(run_cli("clients", "import", registry_file, "--config", config))
    assert "no permissions" in line and "redis redis://gateway:***@" in line
