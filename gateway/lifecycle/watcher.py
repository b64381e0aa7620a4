"""One file watcher for every Reloadable part: a poll a second, and SIGHUP's reload of all.

Polling ``stat`` is portable, needs no extra dependency and sees Kubernetes'
Secret/ConfigMap updates, which swap a ``..data`` symlink rather than write
the file: the signature follows symlinks, so the swap changes the inode.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.lifecycle.reloadable import Reloadable

log = logging.getLogger("gateway.lifecycle")

POLL_SECONDS = 1.0

FileSignature = tuple[tuple[str, int, int, int] | tuple[str, None, None, None], ...]


def signature(paths: Iterable[Path | None]) -> FileSignature:
    """(path, mtime_ns, size, inode) of each file, following symlinks; None fields: missing."""
    result: list[tuple[str, int, int, int] | tuple[str, None, None, None]] = []
    for path in paths:
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            result.append((str(path), None, None, None))
        else:
            result.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


@dataclass(slots=True)
class _Watched:
    part: Reloadable
    seen: FileSignature  # the files as they were when the part last read them


class FileWatcher:
    """Reloads a part when its files' signature moves, or while its last reload failed."""

    def __init__(self, parts: Iterable[Reloadable] = (), *, interval: float = POLL_SECONDS) -> None:
        self.interval = interval
        self._watched: list[_Watched] = []
        for part in parts:
            self.add(part)

    @property
    def parts(self) -> tuple[Reloadable, ...]:
        return tuple(watched.part for watched in self._watched)

    def add(self, part: Reloadable) -> None:
        """Watch ``part``'s files from now on (its state was just built from them)."""
        if any(watched.part.name == part.name for watched in self._watched):
            # Names are metric labels: two parts under one would add up unseen.
            raise ValueError(f"a reloadable part named {part.name!r} is already watched")
        self._watched.append(_Watched(part, signature(part.watched_files())))

    def poll(self) -> dict[str, bool]:
        """Check every part once; the outcome of each one reloaded, by name."""
        outcomes: dict[str, bool] = {}
        for watched in self._watched:
            now = signature(watched.part.watched_files())
            if now == watched.seen and not watched.part.failing:
                continue
            # Recorded before reading: a write landing during the reload is seen next poll.
            watched.seen = now
            outcomes[watched.part.name] = self._reload(watched.part)
        return outcomes

    def reload_all(self) -> bool:
        """SIGHUP: every part re-reads its files now; False if any kept its old state."""
        ok = True
        for watched in self._watched:
            watched.seen = signature(watched.part.watched_files())
            ok = self._reload(watched.part) and ok
        return ok

    async def watch(self) -> None:
        """The one background task: poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.poll()

    @staticmethod
    def _reload(part: Reloadable) -> bool:
        try:
            return part.reload()
        except Exception:
            # The contract says a part keeps its state and reports; one that
            # raises anyway must not end the watching of every other part.
            log.exception("reload of %s raised", part.name)
            return False
