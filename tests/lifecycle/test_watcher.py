"""gateway.lifecycle.watcher: one watcher polls every part's files; SIGHUP reloads them all."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.lifecycle import FileWatcher, ReloadableBase, ReloadFailed, signature
from tests.conftest import MakeGateway, Upstream, name_secret, registry_client
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"

log = logging.getLogger("tests.lifecycle")


class TextFiles(ReloadableBase):
    """A real part: the concatenated text of its files; a file saying "bad" is refused."""

    def __init__(self, name: str, *paths: Path) -> None:
        super().__init__(name=name, logger=log, failure=f"{name} reload failed")
        self.paths = paths
        self.text = self._read()
        self.on_rebuild: list[Path] = []  # files to touch while reading (a concurrent write)

    def _read(self) -> str:
        texts = [path.read_text() for path in self.paths]
        bad = [str(path) for path, text in zip(self.paths, texts, strict=True) if text == "bad"]
        if bad:
            raise ReloadFailed([f"{path}: bad" for path in bad])
        return "".join(texts)

    def watched_files(self) -> tuple[Path, ...]:
        return self.paths

    def rebuild(self) -> None:
        text = self._read()
        for path in self.on_rebuild:
            path.write_text(path.read_text() + "!")
        self.on_rebuild = []
        self.text = text


class Raises:
    """Breaks the contract: its reload raises.  The watcher must outlive it."""

    name = "raises"
    reloads_ok = 0
    reload_failures = 0
    failing = True

    def __init__(self) -> None:
        self.calls = 0

    def watched_files(self) -> tuple[Path, ...]:
        return ()

    def reload(self) -> bool:
        self.calls += 1
        raise RuntimeError("a bug")


def write(path: Path, text: str) -> None:
    """A write whose mtime differs from the last one even on a coarse clock."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000 * (1 + len(text))))


# --------------------------------------------------------------------------- signature


def test_signature_follows_a_kubernetes_data_symlink_swap(tmp_path: Path) -> None:
    # A Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..v1; the kubelet
    # writes ..v2 and renames a new ..data over the old one.
    for version in ("..v1", "..v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "tls.crt").write_text("same size")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "tls.crt").symlink_to(Path("..data") / "tls.crt")
    before = signature([tmp_path / "tls.crt"])
    os.utime(tmp_path / "..v2" / "tls.crt", ns=(0, before[0][1] or 0))  # same mtime too
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    after = signature([tmp_path / "tls.crt"])
    assert after != before  # the inode moved
    assert signature([tmp_path / "tls.crt"]) == after


def test_signature_of_a_missing_file_and_of_none(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert signature([missing, None]) == ((str(missing), None, None, None),)


# --------------------------------------------------------------------------- poll


def test_poll_reloads_only_the_parts_whose_files_changed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for path in (a, b, c):
        path.write_text(path.name)
    first, second = TextFiles("first", a, b), TextFiles("second", c)
    watcher = FileWatcher([first, second])
    assert watcher.parts == (first, second)
    assert watcher.poll() == {}

    write(b, "B")
    assert watcher.poll() == {"first": True}
    assert first.text == "aB" and second.reloads_ok == 0
    assert watcher.poll() == {}

    c.unlink()  # a file that disappears is a change, and a failed reload
    assert watcher.poll() == {"second": False}
    assert second.text == "c" and second.failing


def test_a_failing_part_is_retried_every_poll_until_it_loads(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("good")
    part = TextFiles("part", path)
    watcher = FileWatcher([part])
    write(path, "bad")
    assert watcher.poll() == {"part": False}
    # No write in between (a chmod, a file that became readable): tried again anyway.
    assert watcher.poll() == {"part": False}
    assert part.reload_failures == 1 and part.text == "good"
    write(path, "better")
    assert watcher.poll() == {"part": True}
    assert part.text == "better"
    assert watcher.poll() == {}


def test_a_write_during_a_reload_is_seen_by_the_next_poll(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("one")
    part = TextFiles("part", path)
    watcher = FileWatcher([part])
    write(path, "two")
    part.on_rebuild = [path]  # lands after the read, before the poll ends
    assert watcher.poll() == {"part": True}
    assert part.text == "two"
    assert watcher.poll() == {"part": True}
    assert part.text == "two!"


def test_reload_all_rereads_every_part_now(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    first, second = TextFiles("first", a), TextFiles("second", b)
    watcher = FileWatcher([first, second])
    assert watcher.reload_all() is True  # nothing changed: SIGHUP reads anyway
    assert (first.reloads_ok, second.reloads_ok) == (1, 1)

    write(a, "bad")
    assert watcher.reload_all() is False  # one part kept its state...
    assert second.reloads_ok == 2  # ...the others reloaded all the same
    assert first.text == "a" and first.failing
    write(a, "A")
    assert watcher.reload_all() is True
    assert watcher.poll() == {}  # what SIGHUP read is not read again


def test_part_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("a")
    watcher = FileWatcher([TextFiles("same", path)])
    with pytest.raises(ValueError, match="'same' is already watched"):
        watcher.add(TextFiles("same", path))


def test_a_part_that_raises_is_logged_and_the_others_still_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a"
    path.write_text("a")
    broken, part = Raises(), TextFiles("part", path)
    watcher = FileWatcher([broken, part])
    write(path, "A")
    assert watcher.poll() == {"raises": False, "part": True}
    assert watcher.reload_all() is False
    assert broken.calls == 2 and part.reloads_ok == 2
    assert "reload of raises raised" in caplog.text


async def test_one_task_polls_at_its_interval_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "a"
    path.write_text("a")
    broken, part = Raises(), TextFiles("part", path)
    watcher = FileWatcher([broken, part], interval=0.02)
    task = asyncio.create_task(watcher.watch())
    try:
        write(path, "A")
        for _ in range(250):
            if part.text == "A":
                break
            await asyncio.sleep(0.02)
        assert part.text == "A" and part.reloads_ok == 1
        assert broken.calls >= 1 and not task.done()  # a raising part ends nothing
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- in the gateway


async def reload_counts(admin_url: str) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as session, session.get(admin_url + "/metrics") as r:
        text = await r.text()
    return {
        (s.labels["component"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "mtls_gateway_reloads_total"
    }


async def test_the_gateway_watches_every_part_once_and_counts_each_in_metrics(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        extra={
            "outbound": [
                {
                    "bind": "127.0.0.1:0",
                    "destination": "https://127.0.0.1:9",
                    "tls": {
                        "cert": str(client_cert.cert_path),
                        "key": str(client_cert.key_path),
                        "ca": str(pki.ca.cert_path),
                    },
                }
            ]
        },
    )
    parts = ["config", "tls:listeners[0]", "registry", "signing_keys", "outbound[0].tls"]
    assert [part.name for part in gw.gateway.watcher.parts] == parts
    before = await reload_counts(gw.admin_url)
    assert {before[(name, outcome)] for name in parts for outcome in ("ok", "failed")} == {0}
    assert await gw.gateway.reload() is True  # what SIGHUP runs
    after = await reload_counts(gw.admin_url)
    assert {name: after[(name, "ok")] for name in parts} == dict.fromkeys(parts, 1)


async def test_sighup_reloads_every_part_of_a_served_gateway(
    tmp_path: Path, pki: Pki, echo_upstream: Upstream
) -> None:
    from tests.security.test_logs import serve_subprocess

    clients = [registry_client("mtls.client", name_secret(CLIENT_DN))]
    parts = ("config", "tls:listeners[0]", "registry", "signing_keys")
    async with serve_subprocess(
        tmp_path,
        pki,
        clients=clients,
        upstream=echo_upstream,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as served:
        before = await reload_counts(served.admin_url)
        served.process.send_signal(signal.SIGHUP)  # no file changed: read them all anyway
        deadline = time.monotonic() + 10
        while True:
            after = await reload_counts(served.admin_url)
            if all(after[(name, "ok")] == before[(name, "ok")] + 1 for name in parts):
                break
            assert time.monotonic() < deadline, f"not every part reloaded: {after}"
            await asyncio.sleep(0.05)
        assert all(after[(name, "failed")] == 0 for name in parts)
