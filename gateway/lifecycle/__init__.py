"""Reloading without restart: one Reloadable contract and one file watcher for all its parts."""

from gateway.lifecycle.reloadable import Reloadable, ReloadableBase, ReloadFailed
from gateway.lifecycle.watcher import FileSignature, FileWatcher, signature

__all__ = [
    "FileSignature",
    "FileWatcher",
    "ReloadFailed",
    "Reloadable",
    "ReloadableBase",
    "signature",
]
