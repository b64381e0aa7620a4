"""gateway.registry.yaml_write: locked, checked, round-trip writes of clients.yaml."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.registry.base import RegistryWriteError
from gateway.registry.model import Client, parse_client
from gateway.registry.yaml_file import YamlRegistry, load_registry_file
from gateway.registry.yaml_write import ATTEMPTS, lock_path, write_clients
from tests.conftest import name_secret, registry_client

COMMENTED = """\
# Clients of the payments team; ask #payments before removing one.
clients:
    -   client_id: billing   # the batch job
        allowed_scopes: [api1, api2]
        secrets:
            -   type: X509CertificateName
                value: 'CN=billing, O=company'
"""


def _client(client_id: str, dn: str | None = None) -> Client:
    return parse_client(registry_client(client_id, name_secret(dn or f"CN={client_id}")))


def _ids(path: Path) -> list[str]:
    return [c.client_id for c in load_registry_file(path)]


def _others(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir() if p.name not in {"clients.yaml", ".clients.yaml.lock"}
    )


@contextmanager
def _lock_held(path: Path) -> Iterator[None]:
    """Another writer in the middle of its write (flock is per open file, so this excludes us)."""
    fd = os.open(lock_path(path), os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def commented(tmp_path: Path) -> Path:
    path = tmp_path / "clients.yaml"
    path.write_text(COMMENTED)
    return path


async def test_add_keeps_comments_quotes_flow_lists_and_indentation(commented: Path) -> None:
    registry = YamlRegistry(commented)
    await registry.put(_client("added"))
    text = commented.read_text()
    assert text.startswith(COMMENTED)
    assert text[len(COMMENTED) :].startswith("    -   client_id: added\n")
    assert _ids(commented) == ["billing", "added"]

    await registry.remove("added")
    assert commented.read_text() == COMMENTED


async def test_a_replaced_client_keeps_the_keys_that_did_not_change(commented: Path) -> None:
    registry = YamlRegistry(commented)
    (billing,) = await registry.list_clients()
    changed = parse_client({**billing.to_dict(), "allowed_scopes": ["api1", "api2", "api3"]})
    await registry.put(changed)
    text = commented.read_text()
    assert "# Clients of the payments team" in text and "# the batch job" in text
    assert "value: 'CN=billing, O=company'" in text  # untouched key, quotes as written
    assert YamlRegistry(commented).index.get("billing") == changed


async def test_comments_only_and_empty_flow_lists_grow_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text("# nobody yet\n")
    await YamlRegistry(path).put(_client("a"))
    assert path.read_text().startswith("# nobody yet\nclients:\n- client_id: a\n")

    path.write_text("clients: []  # filled by the CLI\n")
    await YamlRegistry(path).put(_client("b"))
    assert "[" not in path.read_text().splitlines()[0]  # a block list, not one long flow line
    assert _ids(path) == ["b"]


async def test_a_write_waits_for_the_lock_and_fails_cleanly_when_it_never_comes(
    commented: Path,
) -> None:
    before = commented.read_bytes()
    with _lock_held(commented), pytest.raises(RegistryWriteError, match="held the lock"):
        write_clients(commented, lambda now: [*now, _client("x")], lock_timeout=0.2)
    assert commented.read_bytes() == before
    assert _others(commented.parent) == []


async def test_a_change_made_by_a_program_ignoring_the_lock_is_kept(commented: Path) -> None:
    calls = 0

    def add_after_an_editor_saved(now: list[Client]) -> list[Client]:
        nonlocal calls
        calls += 1
        if calls == 1:
            # An editor saves between this writer's read and its rename.
            commented.write_text(
                COMMENTED
                + "    -   client_id: by.hand\n        secrets: [{type: X509CertificateName, value: 'CN=h'}]\n"
            )
        return [*now, _client("cli")]

    write_clients(commented, add_after_an_editor_saved)
    assert calls == 2  # the content hash differed, so the write started over
    assert _ids(commented) == ["billing", "by.hand", "cli"]
    assert _others(commented.parent) == []


async def test_a_file_that_keeps_changing_is_left_to_the_other_program(commented: Path) -> None:
    calls = 0

    def racing(now: list[Client]) -> list[Client]:
        nonlocal calls
        calls += 1
        commented.write_text(f"{COMMENTED}# edit {calls}\n")
        return [*now, _client("cli")]

    with pytest.raises(RegistryWriteError, match="changed by another program"):
        write_clients(commented, racing)
    assert calls == ATTEMPTS
    assert commented.read_text() == f"{COMMENTED}# edit {ATTEMPTS}\n"
    assert _others(commented.parent) == []  # the temporary files went too


async def test_a_file_broken_since_start_is_not_rewritten(commented: Path) -> None:
    registry = YamlRegistry(commented)
    index = registry.index
    broken = COMMENTED + "    -   client_id: billing\n"
    commented.write_text(broken)
    with pytest.raises(RegistryWriteError, match=r"clients\.yaml:clients\[1\]") as info:
        await registry.put(_client("x"))
    assert "nothing written" in str(info.value)
    assert commented.read_text() == broken
    assert registry.index is index


async def test_start_removes_leftovers_of_killed_writers_but_not_live_ones(
    commented: Path,
) -> None:
    leftover = commented.with_name(".clients.yaml.tmp-abc123")
    leftover.write_text("clients: [half")
    registry = YamlRegistry(commented)
    with _lock_held(commented):
        await registry.start()  # a writer holds the lock: its file may be live
        assert leftover.exists()
    await registry.close()
    await registry.start()
    await registry.close()
    assert not leftover.exists()


async def test_remove_of_an_absent_client_writes_nothing(commented: Path) -> None:
    registry = YamlRegistry(commented)
    before = os.stat(commented)
    generation = registry.generation
    assert await registry.remove("nobody") is False
    assert os.stat(commented).st_ino == before.st_ino
    assert registry.generation == generation


async def test_merge_keeps_the_clients_not_named(commented: Path) -> None:
    registry = YamlRegistry(commented)
    await registry.put(_client("a"))
    await registry.merge([_client("a", "CN=a2"), _client("b")])
    assert _ids(commented) == ["billing", "a", "b"]
    assert YamlRegistry(commented).index.get("a") == _client("a", "CN=a2")


@pytest.mark.parametrize("broken", ["clients: [\n  - {client_id: a\n", "clients:\n\t- x\n"])
async def test_a_file_made_unreadable_since_start_is_refused_in_one_line(
    commented: Path, broken: str
) -> None:
    registry = YamlRegistry(commented)
    commented.write_text(broken)
    with pytest.raises(RegistryWriteError) as info:
        await registry.put(_client("x"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{commented}: line ")
    assert "invalid YAML" in message and message.endswith("nothing written")
    assert commented.read_text() == broken
