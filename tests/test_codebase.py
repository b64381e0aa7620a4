"""The code stays lint- and type-clean: ruff and mypy --strict (gateway/, the build, bench/ and tests/) run as part of the suite."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Everything Python in the tree; mypy's own list is pyproject.toml's [tool.mypy] files.
CHECKED = ["gateway", "build_backend", "setup.py", "tests", "bench"]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "ruff", "check", *CHECKED],
        [sys.executable, "-m", "ruff", "format", "--check", *CHECKED],
        [sys.executable, "-m", "mypy"],
        # The tests and bench scripts call the gateway's own APIs: typed, they
        # cannot drift from them unnoticed (bench/registry_lookup.py once
        # called match() with a keyword that had been renamed).
        [sys.executable, "-m", "mypy", "bench", "tests"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict", "mypy-strict-bench-tests"],
)
def test_static_checks(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# Underscore names that are public API after all, each with why.
_PUBLIC_UNDERSCORE = {
    "_replace",  # namedtuple's documented copy-with-changes method
    "_exit",  # os._exit: documented, the only exit a forked child may take
    "_SubParsersAction",  # typeshed's only name for add_subparsers()'s type (annotation only)
}


def _foreign_private_attributes(root: Path = ROOT) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``: another object's internals."""
    found = []
    for path in sorted((root / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in _PUBLIC_UNDERSCORE:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_attribute_of_another_object_or_library_is_used() -> None:
    """Issue 12: nothing on the request path may lean on aiohttp's, asyncio's or ssl's internals
    (the first build used _kwargs, _server, _shutdown_timeout, _send_headers_immediately)."""
    assert _foreign_private_attributes() == []


def test_the_private_attribute_check_finds_one(tmp_path: Path) -> None:
    # The check itself must be able to fail: on a line like the first build's.
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "relay.py").write_text(
        "response._send_headers_immediately = False\nself._own = 1\nos._exit(0)\n"
    )
    assert _foreign_private_attributes(tmp_path) == [
        "gateway/relay.py:1: response._send_headers_immediately"
    ]
