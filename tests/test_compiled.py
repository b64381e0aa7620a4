"""The mypyc-compiled data plane (setup.py, ``COMPILE_MTLS_GATEWAY=1``) passes the data-plane tests.

Compiled code is stricter than the interpreter: mypyc checks declared types
at run time, gives a name one type per function (two ``except … as exc``
clauses of different types broke the parser's refusals), and turns class
attributes into per-instance ones.  So a copy of this tree is compiled in
place, exactly as setup.py builds a wheel, and the tests of every compiled
package run on it.  About 90 s to compile, 2 min of tests: deselect with
``-m "not slow"``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.cli.test_main import REPO

# The tests of what setup.py compiles (listener, http1, pipeline, proxy,
# upstream, the framing and header filters, the connection authenticator,
# metrics, the WebSocket handshake), through the production wiring.
DATA_PLANE_TESTS = [
    "tests/http1",
    "tests/listener",
    "tests/pipeline",
    "tests/upstream",
    "tests/security",
    "tests/ops/test_latency.py",
    "tests/ops/test_observability.py",
    "tests/ops/test_heap.py",
    "tests/ops/test_metrics.py",
    "tests/ops/test_worker_metrics.py",
    "tests/auth",
    "tests/test_auth.py",
    "tests/test_revocation.py",
    "tests/websocket/test_handshake.py",
    "tests/test_websocket.py",
    "tests/test_proxy.py",
    "tests/test_refusal_answers.py",
    "tests/test_deadlines.py",
    "tests/test_headers.py",
]


def _compiled_modules() -> list[str]:
    """The module names setup.py's ``COMPILED`` lists (read, not run: it calls setup())."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED":
            paths: list[str] = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


def _copy_tree(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "build")
    for name in ("gateway", "tests"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, target / name)
    shared = REPO.parent / "shared"
    if shared.exists():
        (target.parent / "shared").symlink_to(shared)


def _in_tree(
    tree: Path, env: dict[str, str], args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in the copy, with its sources first on the path."""
    return subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_the_compiled_data_plane_passes_the_data_plane_tests(tmp_path: Path) -> None:
    if shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is None:
        pytest.skip("no C compiler: setup.py installs the pure modules")
    tree = tmp_path / "repo"
    _copy_tree(tree)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    build_env = {**env, "COMPILE_MTLS_GATEWAY": "1"}
    built = _in_tree(tree, build_env, ["setup.py", "build_ext", "--inplace"], timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]

    # Every module setup.py names is an extension now, and it is the one imported.
    modules = _compiled_modules()
    probe = "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    where = _in_tree(tree, env, ["-c", probe, *modules], timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    files = where.stdout.split()
    assert len(files) == len(modules) >= 20
    assert all(f.startswith(str(tree)) and f.endswith(".so") for f in files), files

    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    # Its own base directory: pytest prunes old ones, this run's included.
    pytest_args += ["--basetemp", str(tmp_path / "inner"), *DATA_PLANE_TESTS]
    tests = _in_tree(tree, env, pytest_args, timeout=1200)
    assert tests.returncode == 0, tests.stdout[-5000:]
    assert " passed" in tests.stdout.splitlines()[-1]
