"""gateway.lifecycle.reloadable: swap whole or keep, counters, one log line per distinct error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.lifecycle import ReloadableBase, ReloadFailed

log = logging.getLogger("tests.lifecycle")


class PortFile(ReloadableBase):
    """A real file-backed part: the port number written in one file."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="port", logger=log, failure="port reload failed, keeping the port")
        self.path = path
        self.port = self._read()

    def _read(self) -> int:
        text = self.path.read_text().strip()
        if text == "deep":
            raise RecursionError("maximum recursion depth exceeded")  # what a parser may raise
        try:
            port = int(text)
        except ValueError:
            raise ReloadFailed([f"{self.path}: not a number: {text!r}"]) from None
        if not 0 < port < 65536:
            raise ReloadFailed([f"{self.path}: out of range: {port}", f"{self.path}: try again"])
        return port

    def watched_files(self) -> tuple[Path]:
        return (self.path,)

    def rebuild(self) -> None:
        self.port = self._read()


@pytest.fixture
def part(tmp_path: Path) -> PortFile:
    path = tmp_path / "port"
    path.write_text("8443\n")
    return PortFile(path)


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_a_good_file_is_swapped_in_and_counted(part: PortFile) -> None:
    part.path.write_text("9443")
    assert part.reload() is True
    assert part.port == 9443
    assert (part.reloads_ok, part.reload_failures, part.failing) == (1, 0, False)


def test_a_bad_file_keeps_the_old_state_and_is_logged_once_per_distinct_error(
    part: PortFile, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tests.lifecycle")
    part.path.write_text("eighty")
    assert part.reload() is False
    assert part.port == 8443 and part.failing
    assert part.reload() is False  # the watcher retries a failing part every poll
    assert part.reload_failures == 1
    assert failures_logged(caplog) == [
        f"port reload failed, keeping the port: {part.path}: not a number: 'eighty'"
    ]

    part.path.write_text("70000")  # another error: counted and logged again, problems joined
    assert part.reload() is False
    assert part.reload_failures == 2
    assert failures_logged(caplog)[-1] == (
        f"port reload failed, keeping the port: {part.path}: out of range: 70000; "
        f"{part.path}: try again"
    )

    part.path.write_text("9443")
    assert part.reload() is True and not part.failing
    part.path.write_text("70000")  # the same error after a success is news again
    assert part.reload() is False
    assert (part.reloads_ok, part.reload_failures, len(failures_logged(caplog))) == (1, 3, 3)
    assert part.port == 9443


def test_an_unexpected_exception_is_a_failed_reload_naming_the_files(
    part: PortFile, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tests.lifecycle")
    part.path.write_text("deep")
    assert part.reload() is False
    assert part.port == 8443 and part.reload_failures == 1
    assert failures_logged(caplog) == [
        f"port reload failed, keeping the port: {part.path}: RecursionError: "
        "maximum recursion depth exceeded"
    ]


def test_a_missing_file_is_a_failed_reload(part: PortFile) -> None:
    part.path.unlink()
    assert part.reload() is False
    assert part.port == 8443 and part.failing
