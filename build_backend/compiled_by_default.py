"""The PEP 517 build backend: setuptools, with the data plane compiled by default.

``pip install .`` and ``pipx install .`` build a wheel.  Where this machine
has a C compiler and Python's headers, that wheel's request path is compiled
with mypyc (setup.py's ``COMPILED``): 1.44-1.50x the keep-alive requests per
second of the pure modules (bench/RESULTS.md, session 8), the same choice
PyYAML and msgpack make for their C accelerators.  Where it has neither, or
the compile fails, the wheel holds the pure modules, which behave the same
(tests/test_compiled.py), and the build says so.

mypyc type-checks the modules against their dependencies, so a compiled
build asks pip for them in its build environment, at the versions
requirements.lock pins: the code compiled is the code the suite type-checked
and tested.  An editable install (``pip install -e .``, the suite's) stays
pure: a compiled module beside its source would shadow every edit of it.

``COMPILE_MTLS_GATEWAY`` overrides the choice: ``0`` builds the pure modules
without asking for anything, ``1`` compiles and fails the build if it cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import sysconfig
import tomllib
from pathlib import Path

from setuptools import build_meta

# Unchanged hooks, re-exported for pip.
build_sdist = build_meta.build_sdist
build_editable = build_meta.build_editable
get_requires_for_build_sdist = build_meta.get_requires_for_build_sdist
get_requires_for_build_editable = build_meta.get_requires_for_build_editable
prepare_metadata_for_build_wheel = build_meta.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = build_meta.prepare_metadata_for_build_editable

CHOICE = "COMPILE_MTLS_GATEWAY"  # outside the gateway's MTLS_GATEWAY_* config overrides
ROOT = Path(__file__).resolve().parent.parent
# Besides the project's dependencies: the compiler, and the stubs mypy --strict needs.
COMPILE_TOOLS = ("mypy", "types-PyYAML")


def can_compile() -> bool:
    """A C compiler and Python.h: what building mypyc's C output needs."""
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").is_file():
        return False
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(compiler.split()[0]) is not None


def compiling() -> bool:
    """Whether a wheel built now is compiled (the module docstring)."""
    choice = os.environ.get(CHOICE, "").strip().lower()
    if choice in {"0", "false", "no"}:
        return False
    return choice in {"1", "true", "yes"} or can_compile()


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def locked_versions(lock: Path) -> dict[str, str]:
    """``name==version`` lines of a pip-compile lock, by normalized name."""
    pins: dict[str, str] = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
            if found:
                pins[_normalized(found[1])] = found[2]
    return pins


def compile_requirements(root: Path = ROOT) -> list[str]:
    """The project's dependencies and the compile tools, pinned to the lock where it has them."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = locked_versions(root / "requirements.lock")
    wanted: list[str] = [*project["dependencies"], *COMPILE_TOOLS]
    requirements = []
    for spec in wanted:
        requirement, _, marker = spec.partition(";")
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert found, f"pyproject.toml: unreadable dependency {spec!r}"
        version = pins.get(_normalized(found[1]))
        pinned = f"{found[1]}=={version}" if version else requirement.strip()
        requirements.append(f"{pinned};{marker}" if marker else pinned)
    return requirements


def get_requires_for_build_wheel(config_settings: dict[str, object] | None = None) -> list[str]:
    required: list[str] = build_meta.get_requires_for_build_wheel(config_settings)
    return [*required, *compile_requirements()] if compiling() else required


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, object] | None = None,
    metadata_directory: str | None = None,
) -> str:
    # setup.py reads the choice: "auto" compiles what it can, pure otherwise.
    if os.environ.get(CHOICE, "").strip() == "" and compiling():
        os.environ[CHOICE] = "auto"
    name: str = build_meta.build_wheel(wheel_directory, config_settings, metadata_directory)
    return name
