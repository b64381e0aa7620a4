"""Writes to the YAML registry: serialised, checked, durable, and faithful to the file.

``clients add/remove/import`` each read-modify-write clients.yaml.  Without
coordination two CLIs rewrite the file from their own snapshots and all but
one change is lost, while each says it succeeded.  So a write:

1. takes an exclusive advisory lock (flock) on a sibling lock file.  Not on
   clients.yaml itself: the rename gives clients.yaml a new inode, and a lock
   on the old one would no longer exclude anybody;
2. removes the temporary files of writers that were killed (none can be live,
   since the lock is held);
3. reads the file, parses it exactly as the gateway does, lets the caller
   compute the new client list from what is there *now*, and edits the
   round-trip document (ruamel.yaml) so comments, key order and flow style
   stay as the operator wrote them;
4. re-parses what it is about to write and checks that it is the intended
   registry, writes it to a temporary file in the same directory and fsyncs
   it, checks that clients.yaml still has the content hash read in step 3 (an
   editor or an old CLI ignores the lock; then step 3 starts over), renames
   the temporary file over clients.yaml and fsyncs the directory, so that the
   rename itself survives a crash.

Readers (the gateway's watcher) take no lock: a rename is atomic, so they see
the old file or the new one, never a half-written one.  Any failure leaves
clients.yaml as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RoundTripYAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from gateway.config.reader import ConfigError
from gateway.registry.base import RegistryWriteError
from gateway.registry.matching import ClientIndex
from gateway.registry.model import Client
from gateway.registry.yaml_document import parse_registry_document

LOCK_TIMEOUT = 30.0  # a writer holding the lock longer than this is stuck, not busy
LOCK_POLL = 0.02
ATTEMPTS = 5  # re-reads when a program that ignores the lock changed the file meanwhile

# What mkstemp made before writes had their own prefix: ".clients-" + 8 chars + ".yaml".
_LEGACY_TEMP = re.compile(r"^\.clients-[a-z0-9_]{8}\.yaml$")

# Given the clients in the file now, the clients it should hold (None: no change).
Compute = Callable[[list[Client]], list[Client] | None]


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def stale_temp_files(target: Path) -> list[Path]:
    prefix = _temp_prefix(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return [
        target.with_name(name)
        for name in names
        if name.startswith(prefix) or _LEGACY_TEMP.match(name)
    ]


def _remove_stale_temp_files(target: Path) -> None:
    """Only with the lock held: then no writer is between mkstemp and rename."""
    for path in stale_temp_files(target):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _exclusive_lock(target: Path, timeout: float) -> Iterator[None]:
    lock = lock_path(target)
    try:
        # Read-only is enough for flock, and lets writers running as other users share it.
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RegistryWriteError(f"{lock}: cannot open the lock file: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RegistryWriteError(f"{lock}: cannot lock: {exc.strerror}") from None
            if time.monotonic() > deadline:
                raise RegistryWriteError(
                    f"{lock}: another write has held the lock for {timeout:g}s; nothing written"
                )
            time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def clean_stale_temp_files(target: Path) -> None:
    """At gateway start: remove killed writers' leftovers unless a write is under way."""
    target = target.resolve()
    if not stale_temp_files(target):
        return
    with contextlib.suppress(OSError, RegistryWriteError), _exclusive_lock(target, timeout=0):
        _remove_stale_temp_files(target)


def write_clients(
    path: Path, compute: Compute, *, lock_timeout: float = LOCK_TIMEOUT
) -> ClientIndex:
    """Apply ``compute`` to the registry file under the lock; the index of what it holds after.

    Raises RegistryWriteError (one line naming the file) and leaves the file as it was.
    """
    target = path.resolve()
    with _exclusive_lock(target, lock_timeout):
        _remove_stale_temp_files(target)
        for _ in range(ATTEMPTS):
            before = _read(target, path)
            current = _parse(before, path)
            wanted = compute(current)
            if wanted is None:
                return ClientIndex(current)
            try:
                index = ClientIndex(wanted)
            except ValueError as exc:
                raise RegistryWriteError(str(exc)) from None
            text = render(before.decode("utf-8"), current, wanted, path)
            if _replace_if_unchanged(target, path, before, text):
                return index
    raise RegistryWriteError(
        f"{path}: changed by another program during each of {ATTEMPTS} attempts; nothing written"
    )


def _read(target: Path, path: Path) -> bytes:
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise RegistryWriteError(f"{path}: cannot read: {exc.strerror}") from None


def _parse(data: bytes, path: Path) -> list[Client]:
    # Parsed as the gateway parses it: a file it would refuse is not edited.
    try:
        return parse_registry_document(yaml.safe_load(data.decode("utf-8")), str(path))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise RegistryWriteError(f"{path}: {_yaml_problem(exc)}; nothing written") from None
    except ConfigError as exc:
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise RegistryWriteError(f"{exc.problems[0]}{more}; nothing written") from None


def _yaml_problem(exc: BaseException) -> str:
    """One line, with the line number when the parser gives one."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}invalid YAML: {' '.join(str(problem).split())}"


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ----------------------------------------------------------------- round trip


def render(text: str, current: list[Client], wanted: list[Client], path: Path) -> str:
    """``text`` edited to hold ``wanted``: untouched clients keep every byte they had."""
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long DN onto a second line
    try:
        # The guess only picks the indentation; the document is loaded with the quotes kept.
        _, indent, sequence_indent = load_yaml_guess_indent(text)
        document = rt.load(text)
    except RoundTripYAMLError as exc:
        raise RegistryWriteError(f"{path}: {_yaml_problem(exc)}; nothing written") from None
    if indent is not None:
        rt.indent(mapping=indent, sequence=indent, offset=sequence_indent or 0)
    preamble = ""
    if document is None:
        # An empty or comments-only file: ruamel keeps no comments without a node.
        if text.strip() and all(
            not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
        ):
            preamble = text if text.endswith("\n") else text + "\n"
        document = CommentedMap()
    _sync(document, current, wanted)
    out = io.StringIO()
    rt.dump(document, out)
    result = preamble + out.getvalue()
    _verify(result, wanted, path)
    return result


def _sync(document: CommentedMap, current: list[Client], wanted: list[Client]) -> None:
    entries = document.get("clients")
    if not isinstance(entries, CommentedSeq):
        entries = CommentedSeq()
        document["clients"] = entries
    elif not entries:
        entries.fa.set_block_style()  # `clients: []` grows as a block list
    was = {c.client_id: c for c in current}
    keep = {c.client_id: c for c in wanted}
    for i in reversed(range(len(entries))):
        entry = entries[i]
        client_id = entry.get("client_id") if isinstance(entry, dict) else None
        if client_id not in keep:
            del entries[i]
        elif keep[client_id] != was.get(client_id):
            _update_mapping(entry, keep[client_id].to_dict())
    present = {e.get("client_id") for e in entries if isinstance(e, dict)}
    for client in wanted:
        if client.client_id not in present:
            entries.append(client.to_dict())


def _update_mapping(node: CommentedMap, new: dict[str, Any]) -> None:
    # Key by key, so that the keys that did not change keep their comments and style.
    for key in [k for k in node if k not in new]:
        del node[key]
    for key, value in new.items():
        if key not in node or node[key] != value:
            node[key] = value


def _verify(text: str, wanted: list[Client], path: Path) -> None:
    """What is about to be written must read back as exactly the intended registry."""
    try:
        written = parse_registry_document(yaml.safe_load(text), str(path))
    except yaml.YAMLError as exc:
        raise RegistryWriteError(
            f"{path}: the edited file would not parse ({_yaml_problem(exc)}); nothing written"
        ) from None
    except ConfigError as exc:
        raise RegistryWriteError(
            f"{path}: the edited file would not load ({exc.problems[0]}); nothing written"
        ) from None
    if sorted(written, key=_key) != sorted(wanted, key=_key):
        raise RegistryWriteError(
            f"{path}: the edited file would not hold the intended clients; nothing written"
        )


def _key(client: Client) -> str:
    return client.client_id


# ------------------------------------------------------------------- durable


def _replace_if_unchanged(target: Path, path: Path, before: bytes, text: str) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            _copy_ownership(fh.fileno(), target)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if _digest(_read(target, path)) != _digest(before):
            os.unlink(tmp)
            return False
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RegistryWriteError(f"{path}: cannot write: {exc.strerror or exc}") from None
    _fsync_directory(target.parent)
    return True


def _copy_ownership(fd: int, target: Path) -> None:
    # mkstemp creates 0600 owned by whoever runs the CLI; keep the file's own
    # mode (and owner, when allowed) so that the gateway can still read it.
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(PermissionError):
        os.fchown(fd, st.st_uid, st.st_gid)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
