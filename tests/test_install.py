"""A clean clone installs from requirements.lock into a fresh venv, and its commands work.

What a new machine does with the README: no editable install, no packages
from the developer's environment, only the lock's exact, hashed versions.
The wheel's data plane is compiled where this machine has a C compiler
(build_backend/compiled_by_default.py).  Builds a venv and the compiled
wheel (about two minutes): deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from build_backend.compiled_by_default import can_compile
from tests.cli.test_main import REPO


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result


@pytest.mark.slow
def test_clean_clone_installs_from_the_lock_and_runs(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    _run("git", "clone", "--quiet", REPO, clone, cwd=tmp_path)
    _run(sys.executable, "-m", "venv", ".venv", cwd=clone)
    pip: list[str | Path] = [
        clone / ".venv/bin/python",
        "-m",
        "pip",
        "--quiet",
        "--disable-pip-version-check",
    ]
    _run(*pip, "install", "--require-hashes", "-r", "requirements.lock", cwd=clone)
    _run(*pip, "install", "--no-deps", ".", cwd=clone)
    cli = clone / ".venv/bin/mtls-gateway"

    assert _run(cli, "--help", cwd=clone).stdout.startswith("usage: mtls-gateway")
    # The example config, laid out as its header says (keys/ is created by `keys generate`).
    demo = clone / "demo"
    demo.mkdir()
    shutil.copy(clone / "config/gateway.example.yaml", demo / "gateway.yaml")
    shutil.copy(clone / "config/clients.example.yaml", demo / "clients.yaml")
    _run(cli, "certs", "init", "pki", cwd=demo)
    _run(cli, "keys", "generate", "keys/signing.pem", cwd=demo)
    assert (demo / "keys").stat().st_mode & 0o077 == 0
    checked = _run(cli, "check", "--config", "gateway.yaml", cwd=demo)
    assert checked.stdout.startswith("gateway.yaml: ok:"), checked.stdout
    # The installed package is the clone's, not this checkout's.
    where = _run(
        clone / ".venv/bin/python", "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path
    )
    assert where.stdout.startswith(str(clone / ".venv")), where.stdout
    # The request path is the compiled one wherever it could be built, the
    # rest stays Python (setup.py's COMPILED).
    probe = "import gateway.http1.server as a, gateway.cli.main as b; print(a.__file__, b.__file__)"
    server, cli_main = _run(clone / ".venv/bin/python", "-c", probe, cwd=tmp_path).stdout.split()
    assert server.endswith(".so") == can_compile(), server
    assert cli_main.endswith(".py"), cli_main
