"""The build backend's choice: compiled wheels where a compiler is present, pinned to the lock.

The build itself (a clean clone's ``pip install .``) is tests/test_install.py;
the compiled modules' behaviour is tests/test_compiled.py.
"""

from __future__ import annotations

import tarfile
import tomllib
from pathlib import Path

import pytest

from build_backend import compiled_by_default as backend
from tests.cli.test_main import REPO


def test_the_lock_pins_are_read_by_normalized_name(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# a comment\n"
        "pyopenssl==26.4.0 \\\n"
        "    --hash=sha256:00\n"
        "ruamel-yaml==0.18.10\n"
        "    # via mtls-gateway\n"
    )
    assert backend.locked_versions(lock) == {"pyopenssl": "26.4.0", "ruamel-yaml": "0.18.10"}
    assert backend.locked_versions(tmp_path / "absent.lock") == {}


def test_a_compiled_build_asks_for_every_dependency_and_mypy_at_the_locks_versions() -> None:
    pins = backend.locked_versions(REPO / "requirements.lock")
    requirements = backend.compile_requirements(REPO)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]

    assert len(requirements) == len(dependencies) + len(backend.COMPILE_TOOLS)
    assert f"mypy=={pins['mypy']}" in requirements
    assert f"pyOpenSSL=={pins['pyopenssl']}" in requirements
    assert f"ruamel.yaml=={pins['ruamel-yaml']}" in requirements
    # An environment marker stays with its requirement.
    assert f"uvloop=={pins['uvloop']}; sys_platform != 'win32'" in requirements
    assert all("==" in requirement for requirement in requirements)


def test_without_a_lock_the_ranges_of_pyproject_are_asked_for(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["httptools>=0.6,<0.10", "uvloop; os_name == \'posix\'"]\n'
    )
    assert backend.compile_requirements(tmp_path) == [
        "httptools>=0.6,<0.10",
        "uvloop; os_name == 'posix'",
        "mypy",
        "types-PyYAML",
    ]


@pytest.mark.parametrize("value", ["0", "false", "no", " NO "])
def test_compile_mtls_gateway_0_builds_the_pure_modules(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(backend.CHOICE, value)
    assert not backend.compiling()
    assert all("mypy" not in r for r in backend.get_requires_for_build_wheel())


def test_compile_mtls_gateway_1_compiles_even_where_the_probe_finds_no_compiler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv(backend.CHOICE, raising=False)
    assert not backend.can_compile()
    assert not backend.compiling()  # by default: pure, and nothing more asked for
    monkeypatch.setenv(backend.CHOICE, "1")
    assert backend.compiling()  # asked for: the build fails if it cannot


def test_by_default_a_wheel_is_compiled_where_a_compiler_and_headers_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(backend.CHOICE, raising=False)
    assert backend.compiling() == backend.can_compile()
    wanted = backend.get_requires_for_build_wheel()
    assert any(r.startswith("mypy==") for r in wanted) == backend.can_compile()
    # An editable install (the suite's own) never asks for the compiler.
    assert all("mypy" not in r for r in backend.get_requires_for_build_editable())


def test_the_sdist_carries_the_backend_and_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wheel built from the sdist (python -m build, pip from PyPI) needs the
    # backend that pyproject.toml names, and the lock its compiled build pins to.
    monkeypatch.chdir(REPO)
    name = backend.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as sdist:
        members = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
    assert {"build_backend/compiled_by_default.py", "requirements.lock", "setup.py"} <= members
