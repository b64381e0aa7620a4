"""gateway.registry.yaml_file: the embedded YAML registry, its reloads and its writes."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.reader import ConfigError
from gateway.lifecycle import FileWatcher
from gateway.registry.base import RegistryWriteError
from gateway.registry.model import parse_client
from gateway.registry.yaml_file import (
    YamlRegistry,
    dump_registry_document,
    load_registry_file,
    parse_registry_document,
)
from gateway.trust.identity import identity_from_der
from tests.conftest import (
    MakeGateway,
    echoed_headers,
    name_secret,
    registry_client,
    thumbprint_secret,
)
from tests.pki import Issued, Pki
from tests.registry.conftest import pasted_thumbprints

CLIENT_DN = "CN=client, OU=production, O=company"
THUMBPRINT = "bca0d040847f843c5ee0fa6eb494837470155868"


def _write(path: Path, clients: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"clients": clients}), encoding="utf-8")


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "clients.yaml"
    _write(
        path,
        [
            registry_client("mtls.client", name_secret(CLIENT_DN)),
            registry_client("mtls.tb", thumbprint_secret(THUMBPRINT)),
        ],
    )
    path.chmod(0o644)
    return path


def _leftovers(directory: Path) -> list[str]:
    # The lock file stays: removing it would race with a writer that just opened it.
    kept = {"clients.yaml", ".clients.yaml.lock"}
    return sorted(p.name for p in directory.iterdir() if p.name not in kept)


# --------------------------------------------------------------------------- parsing


def test_empty_document_is_an_empty_registry(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text("# nobody yet\n")
    assert load_registry_file(path) == []
    path.write_text("clients: []\n")
    assert load_registry_file(path) == []


def test_duplicate_client_id_lines(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    _write(
        path,
        [
            registry_client("a", name_secret("CN=a")),
            registry_client("b", name_secret("CN=b")),
            registry_client("a", name_secret("CN=c")),
            registry_client("b", name_secret("CN=d")),
        ],
    )
    with pytest.raises(ConfigError) as info:
        load_registry_file(path)
    assert info.value.problems == [
        f"{path}:clients[2].client_id: duplicate of clients[0] (a)",
        f"{path}:clients[3].client_id: duplicate of clients[1] (b)",
    ]


def test_every_bad_client_is_reported_with_its_index_and_id(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    _write(
        path,
        [
            registry_client("ok", name_secret("CN=ok")),
            registry_client("bad.tb", thumbprint_secret("xyz")),
            {"secrets": [name_secret("CN=x")]},
            registry_client("bad.dn", name_secret('CN="open'), colour="red"),
        ],
    )
    with pytest.raises(ConfigError) as info:
        load_registry_file(path)
    problems = info.value.problems
    assert problems[0].startswith(f"{path}:clients[1].secrets[0].value: expected a SHA-1")
    assert problems[0].endswith("(client bad.tb)")
    assert problems[1] == f"{path}:clients[2].client_id: required, a non-empty string"
    assert problems[2] == f"{path}:clients[3].colour: unknown key (client bad.dn)"
    assert problems[3].startswith(f"{path}:clients[3].secrets[0].value: unterminated")
    assert len(problems) == 4


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "<top>: expected a mapping with one key, 'clients'"),
        ("clients: []\nextra: 1\n", "<top>: expected a mapping with one key, 'clients'"),
        ("clients: {a: 1}\n", "clients: expected a list of clients"),
    ],
)
def test_document_shape(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_registry_file(path)
    assert info.value.problems == [f"{path}:{problem}"]


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n  - client_id: a\n    secrets: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_registry_file(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:line ")
    assert "invalid YAML" in problem


def test_dump_then_parse_round_trips(registry_file: Path) -> None:
    clients = load_registry_file(registry_file)
    again = parse_registry_document(yaml.safe_load(dump_registry_document(clients)), "x")
    assert again == clients


# --------------------------------------------------------------------------- serving


async def test_match_get_and_list(registry_file: Path, client_cert: Issued) -> None:
    registry = YamlRegistry(registry_file)
    result = await registry.match(identity_from_der(client_cert.der), exact_only=False)
    assert result.client is not None and result.client.client_id == "mtls.client"
    assert (await registry.get("mtls.tb")) is not None
    assert await registry.get("nobody") is None
    assert [c.client_id for c in await registry.list_clients()] == ["mtls.client", "mtls.tb"]
    assert registry.ready and registry.description == f"yaml:{registry_file}"


async def test_broken_reload_keeps_the_old_index(registry_file: Path, client_cert: Issued) -> None:
    registry = YamlRegistry(registry_file)
    identity = identity_from_der(client_cert.der)
    generation = registry.generation
    index = registry.index

    registry_file.write_text("clients:\n  - client_id: [broken\n")
    assert registry.reload() is False
    assert registry.reload_failures == 1
    assert registry.index is index and registry.generation == generation
    assert (await registry.match(identity, exact_only=False)).client is not None

    _write(registry_file, [registry_client("x", thumbprint_secret("zz"))])  # valid YAML, bad client
    assert registry.reload() is False
    assert registry.reload_failures == 2
    assert registry.index is index

    _write(registry_file, [registry_client("renamed", name_secret(CLIENT_DN))])
    assert registry.reload() is True
    assert registry.reload_failures == 2
    assert registry.generation == generation + 1
    result = await registry.match(identity, exact_only=False)
    assert result.client is not None and result.client.client_id == "renamed"


async def test_a_broken_file_at_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    _write(path, [registry_client("a", name_secret("FOO=bar"))])
    with pytest.raises(ConfigError, match=r"clients\[0\]\.secrets\[0\]\.value"):
        YamlRegistry(path)


async def test_the_file_watcher_picks_up_a_changed_file(registry_file: Path) -> None:
    registry = YamlRegistry(registry_file)
    watcher = FileWatcher([registry], interval=0.02)
    watching = asyncio.create_task(watcher.watch())
    try:
        generation = registry.generation
        _write(registry_file, [registry_client("new", name_secret("CN=new"))])
        for _ in range(250):
            if registry.generation != generation:
                break
            await asyncio.sleep(0.02)
        assert registry.generation == generation + 1
        assert registry.reloads_ok == 1
        assert await registry.get("new") is not None
    finally:
        watching.cancel()


# --------------------------------------------------------------------------- writes


async def test_put_remove_replace_all_are_re_readable(registry_file: Path) -> None:
    registry = YamlRegistry(registry_file)
    added = parse_client(registry_client("added", {"type": "X509SanUri", "value": "spiffe://x/y"}))
    generation = registry.generation

    await registry.put(added)
    assert registry.generation == generation + 1
    assert await registry.get("added") == added
    assert [c.client_id for c in load_registry_file(registry_file)] == [
        "mtls.client",
        "mtls.tb",
        "added",
    ]

    replacement = parse_client(registry_client("added", name_secret("CN=replaced")))
    await registry.put(replacement)
    assert YamlRegistry(registry_file).index.get("added") == replacement

    assert await registry.remove("mtls.tb") is True
    assert await registry.remove("mtls.tb") is False
    assert [c.client_id for c in await YamlRegistry(registry_file).list_clients()] == [
        "mtls.client",
        "added",
    ]

    await registry.replace_all([replacement])
    assert await YamlRegistry(registry_file).list_clients() == [replacement]
    assert _leftovers(registry_file.parent) == []


async def test_writes_replace_the_file_atomically(registry_file: Path) -> None:
    registry = YamlRegistry(registry_file)
    before = os.stat(registry_file)
    await registry.put(parse_client(registry_client("added", name_secret("CN=added"))))
    after = os.stat(registry_file)
    # A new inode renamed over the old one: a reader sees the old or the new
    # file, never a half-written one.
    assert after.st_ino != before.st_ino
    assert _leftovers(registry_file.parent) == []


async def test_writes_keep_the_file_mode(registry_file: Path) -> None:
    # A gateway running as another user must still be able to read the file.
    registry = YamlRegistry(registry_file)
    await registry.put(parse_client(registry_client("added", name_secret("CN=added"))))
    assert stat.S_IMODE(os.stat(registry_file).st_mode) == 0o644


async def test_refused_write_leaves_file_and_index_alone(registry_file: Path) -> None:
    registry = YamlRegistry(registry_file)
    before = registry_file.read_bytes()
    index = registry.index
    duplicate = parse_client(registry_client("same", name_secret("CN=a")))
    with pytest.raises(RegistryWriteError, match="duplicate client_id 'same'"):
        await registry.replace_all([duplicate, duplicate])
    assert registry_file.read_bytes() == before
    assert registry.index is index
    assert _leftovers(registry_file.parent) == []


# --------------------------------------------------------------------------- over real TLS


async def test_pasted_thumbprint_forms_match_over_tls(
    make_gateway: MakeGateway, pki: Pki, tmp_path: Path
) -> None:
    """Colon, space and upper-case thumbprints in the YAML file match their certificates."""
    certs = {source: pki.client(f"tp-{source}") for source in pasted_thumbprints("0" * 40)}
    clients = [
        registry_client(f"tb.{source}", thumbprint_secret(pasted_thumbprints(c.thumbprint)[source]))
        for source, c in certs.items()
    ]
    gw = await make_gateway(clients=clients)
    for source, cert in certs.items():
        async with gw.session(cert) as session, session.get(gw.url + "/tb") as r:
            body = await r.json()
        assert r.status == 200, (source, body)
        assert echoed_headers(body)["x-client-id"] == [f"tb.{source}"]
