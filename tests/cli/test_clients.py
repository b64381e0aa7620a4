"""``mtls-gateway clients …`` writing a YAML registry: the real CLI, many at once, killed mid-write."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.registry.yaml_file import load_registry_file
from tests.cli.test_main import _env, error_lines, run_cli
from tests.spec_example import SPEC_REGISTRY, write_spec_example

CLI_TIMEOUT = 120.0


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    return write_spec_example(tmp_path / "conf")


def _start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "clients", *args, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _ids(registry: Path) -> set[str]:
    return {c.client_id for c in load_registry_file(registry)}


def _debris(directory: Path) -> list[str]:
    # The lock file stays on purpose; anything else that is not ours is debris.
    ours = {"clients.yaml", ".clients.yaml.lock", "gateway.yaml", "keys", "pki"}
    return sorted(p.name for p in directory.iterdir() if p.name not in ours)


class _Watcher:
    """Reads the registry file over and over, as a running gateway's watcher does."""

    def __init__(self, registry: Path) -> None:
        self.registry = registry
        self.reads = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                load_registry_file(self.registry)
            except Exception as exc:
                self.failures.append(str(exc))
            self.reads += 1


def test_concurrent_adds_and_removes_lose_nothing(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    doomed = [f"old.{i}" for i in range(10)]
    for client_id in doomed:
        assert (
            run_cli(
                "clients", "add", client_id, "--dn", f"CN={client_id}", "--config", spec_dir
            ).returncode
            == 0
        )
    added = [f"new.{i}" for i in range(20)]

    with _Watcher(registry) as watcher:
        processes = [
            _start(spec_dir, "add", c, "--dn", f"CN={c}", "--scope", "api1") for c in added
        ]
        processes += [_start(spec_dir, "remove", c) for c in doomed]
        results = [p.communicate(timeout=CLI_TIMEOUT) for p in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert out.startswith(("added ", "removed ")), out

    assert _ids(registry) == {"mtls.client", *added}
    assert watcher.reads > 0 and watcher.failures == []  # never a half-written file
    assert _debris(spec_dir.parent) == []


def test_a_commented_registry_survives_clients_add(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    assert registry.read_text() == SPEC_REGISTRY  # comments, flow lists, quotes, 2+2 indent
    result = run_cli("clients", "add", "second", "--san-uri", "spiffe://x/y", "--config", spec_dir)
    assert result.returncode == 0, result.stderr
    text = registry.read_text()
    # Every byte the operator wrote is still there, in order; the new client follows.
    assert text.startswith(SPEC_REGISTRY)
    assert text[len(SPEC_REGISTRY) :].startswith("  - client_id: second\n")
    assert _ids(registry) == {"mtls.client", "second"}

    # Replacing or removing the other client leaves the commented one as written.
    assert (
        run_cli(
            "clients", "add", "second", "--dn", "CN=s", "--replace", "--config", spec_dir
        ).returncode
        == 0
    )
    assert run_cli("clients", "remove", "second", "--config", spec_dir).returncode == 0
    assert registry.read_text() == SPEC_REGISTRY


def test_sigkill_during_writes_never_breaks_the_file(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    rng = random.Random(15)
    survivors = set()
    for i in range(12):
        process = _start(spec_dir, "add", f"k.{i}", "--dn", f"CN=k.{i}")
        # Python start-up takes a few hundred ms; spread the kills over it and the write.
        time.sleep(rng.uniform(0.1, 0.8))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=CLI_TIMEOUT)
        if process.returncode == 0:
            survivors.add(f"k.{i}")
        load_registry_file(registry)  # parses after every kill
    # What a writer killed between creating its temporary file and renaming it leaves.
    (spec_dir.parent / ".clients.yaml.tmp-killed").write_text("clients: [half")
    (spec_dir.parent / ".clients-abcd1234.yaml").write_text("clients: [old")  # older CLIs'

    result = run_cli("clients", "add", "after", "--dn", "CN=after", "--config", spec_dir)
    assert result.returncode == 0, result.stderr
    assert _debris(spec_dir.parent) == []
    assert survivors | {"mtls.client", "after"} <= _ids(registry)


def test_a_failed_write_is_one_line_and_changes_nothing(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    before = registry.read_bytes()
    # The lock cannot be taken: here because something else sits at its name.
    lock = spec_dir.parent / ".clients.yaml.lock"
    lock.mkdir()
    (line,) = error_lines(run_cli("clients", "add", "x", "--dn", "CN=x", "--config", spec_dir))
    assert line.startswith(f"{lock}: cannot open the lock file")
    (line,) = error_lines(run_cli("clients", "remove", "mtls.client", "--config", spec_dir))
    assert line.startswith(f"{lock}: cannot open the lock file")
    assert registry.read_bytes() == before
    assert _debris(spec_dir.parent) == []


def test_concurrent_adds_of_one_id_without_replace_let_exactly_one_in(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    processes = [_start(spec_dir, "add", "same", "--dn", f"CN=writer {i}") for i in range(8)]
    results = [p.communicate(timeout=CLI_TIMEOUT) for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes == [0] + [1] * 7, results
    refusals = {err.strip() for p, (_, err) in zip(processes, results, strict=True) if p.returncode}
    assert refusals == {"mtls-gateway: client same: already exists (use --replace)"}
    (winner,) = [c for c in load_registry_file(registry) if c.client_id == "same"]
    assert len(winner.secrets) == 1
