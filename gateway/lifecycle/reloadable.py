"""The Reloadable contract: a part of the gateway rebuilt from files, swapped whole or kept.

Every part that reads files after start (gateway.yaml's routes, listener TLS
material, signing keys, outbound client TLS, the YAML registry) follows one
rule, ghostunnel's certloader rule: build the complete new state, swap it in
with one assignment, and on any failure keep serving the old state.  A part
that fails is retried on every poll (a ``chmod 600`` changes no mtime, and a
Secret may be written in two steps), so each distinct error is logged and
counted once, not once a second.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol


class ReloadFailed(Exception):
    """What a rebuild could not use; each problem names its file (``file:key: message``)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class Reloadable(Protocol):
    """What the file watcher, SIGHUP and /metrics need from a reloadable part."""

    @property
    def name(self) -> str:
        """Unique among the gateway's parts: the ``component`` label of the reload metric."""
        ...

    @property
    def reloads_ok(self) -> int: ...

    @property
    def reload_failures(self) -> int:
        """Counted once per distinct error, like its log line."""
        ...

    @property
    def failing(self) -> bool:
        """The last reload failed: the watcher retries it on every poll."""
        ...

    def watched_files(self) -> Iterable[Path]:
        """The files the state is built from; a change to any of them reloads it."""
        ...

    def reload(self) -> bool:
        """Rebuild from the files now; False (and the old state kept) if that failed."""
        ...


class ReloadableBase(ABC):
    """The bookkeeping of the contract; subclasses write ``rebuild`` and ``watched_files``."""

    def __init__(self, *, name: str, logger: logging.Logger, failure: str) -> None:
        """``failure`` starts the error line: "TLS reload failed for X, keeping current material"."""
        self.name = name
        self.reloads_ok = 0
        self.reload_failures = 0
        self._reload_log = logger
        self._failure = failure
        self._last_error: str | None = None

    @property
    def failing(self) -> bool:
        return self._last_error is not None

    @abstractmethod
    def watched_files(self) -> Iterable[Path]: ...

    @abstractmethod
    def rebuild(self) -> None:
        """Build the new state from the files and swap it in; raise ReloadFailed to keep the old."""

    def reload(self) -> bool:
        try:
            self.rebuild()
        except ReloadFailed as exc:
            return self._failed("; ".join(exc.problems))
        except Exception as exc:
            # Whatever else a bad file provokes (a YAML nested 5,000 deep ends in
            # RecursionError) is one failed reload too, never the end of reloading.
            files = ", ".join(str(path) for path in self.watched_files())
            return self._failed(f"{files}: {type(exc).__name__}: {exc}")
        self._last_error = None
        self.reloads_ok += 1
        return True

    def _failed(self, message: str) -> bool:
        if message != self._last_error:
            self.reload_failures += 1
            self._reload_log.error("%s: %s", self._failure, message)
            self._last_error = message
        return False
