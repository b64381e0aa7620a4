"""The YAML walker every section parser uses: ``r.get(section, key, parser, default)``.

Every problem is collected and reported as ``file:key: message`` so that an
operator fixes a config in one pass (``mtls-gateway check``).  Paths are
relative to the config file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

T = TypeVar("T")
MISSING: Any = object()


class ConfigError(Exception):
    """One or more problems, each ``file:key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Reader:
    """Walks the YAML tree, remembering the key path for error messages."""

    def __init__(self, source: Path, base: Path) -> None:
        self.source = source
        self.base = base
        self.problems: list[str] = []
        self._path: list[str] = []
        # (id(mapping), key) -> the environment variable that put the key there.
        self.env_origins: dict[tuple[int, str], str] = {}

    @property
    def where(self) -> str:
        dotted = ""
        for part in self._path:
            dotted += part if part.startswith("[") else (f".{part}" if dotted else part)
        return dotted

    def problem(self, message: str, key: str | None = None) -> None:
        where = self.where if key is None else (f"{self.where}.{key}" if self.where else key)
        self.problems.append(f"{self.source}:{where or '<top>'}: {message}")

    @contextmanager
    def at(self, key: str | int) -> Iterator[None]:
        self._path.append(f"[{key}]" if isinstance(key, int) else key)
        try:
            yield
        finally:
            self._path.pop()

    def mapping(self, data: Any, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(f"expected a mapping, got {kind_of(data)}")
            return {}
        for key in data:
            if key not in allowed:
                expected = f"expected one of: {', '.join(sorted(allowed))}"
                variable = self.env_origins.get((id(data), str(key)))
                if variable is not None:
                    where = f"{self.where}.{key}" if self.where else str(key)
                    self.problems.append(f"env:{variable}: unknown key {where} ({expected})")
                else:
                    self.problem(f"unknown key ({expected})", str(key))
        return data

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        convert: Callable[[Any], T],
        default: Any = MISSING,
    ) -> T:
        with self.at(key):
            if key not in data or data[key] is None:
                if default is MISSING:
                    self.problem("required")
                    return cast(T, None)
                return cast(T, default)
            try:
                return convert(data[key])
            except (ValueError, TypeError) as exc:
                self.problem(str(exc))
                return cast(T, None)

    def file(self, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path")
        path = Path(value)
        path = path if path.is_absolute() else self.base / path
        if not path.exists():
            raise ValueError(f"file not found: {path}")
        if not os.access(path, os.R_OK):
            raise ValueError(f"file not readable: {path}")
        return path

    def file_at(self, index: int, value: Any) -> Path:
        """``value`` as item ``index`` of a list of files; a problem there reads as None."""
        with self.at(index):
            try:
                return self.file(value)
            except ValueError as exc:
                self.problem(str(exc))
                return _placeholder()  # type: ignore[no-any-return]


def _placeholder() -> Any:
    return None


def kind_of(value: Any) -> str:
    """What a YAML value is, for messages: "a mapping", "a list", "a string", ..."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def read_yaml_file(path: Path) -> Any:
    """Read YAML, turning every failure into ConfigError with file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else "<top>"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{line}: invalid YAML: {problem}"]) from None
    except RecursionError:
        # PyYAML's parser recurses per nesting level: "[[[[..." exhausts the stack.
        raise ConfigError([f"{path}:<top>: invalid YAML: nested too deeply"]) from None
