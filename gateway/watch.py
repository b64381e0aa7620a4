"""Change detection for files the gateway reloads (certificates, keys, registry).

Polling ``stat`` is portable, needs no extra dependency and sees Kubernetes'
Secret/ConfigMap updates, which swap a ``..data`` symlink rather than write
the file: the signature follows symlinks, so the swap changes the inode.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

FileSignature = tuple[tuple[str, int, int, int] | tuple[str, None, None, None], ...]


def signature(paths: Iterable[Path | None]) -> FileSignature:
    """(path, mtime_ns, size, inode) of each file, following symlinks."""
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


class ChangeDetector:
    """Remembers a set of files' signature; ``changed()`` says whether it moved."""

    __slots__ = ("_last", "_paths")

    def __init__(self, paths: Iterable[Path | None]) -> None:
        self._paths = tuple(p for p in paths if p is not None)
        self._last = signature(self._paths)

    def changed(self) -> bool:
        current = signature(self._paths)
        if current != self._last:
            self._last = current
            return True
        return False
