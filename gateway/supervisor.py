"""``serve``: one process, or N worker processes sharing the ports (SO_REUSEPORT).

With N workers the parent binds nothing itself: each worker binds every port
with SO_REUSEPORT and the kernel spreads connections.  The parent restarts a
worker that dies and passes SIGHUP/SIGTERM on to all of them.

The parent is one loop that owns every decision: signal handlers only record
the signal and wake the loop (``signal.set_wakeup_fd``), so a restart can
never be decided on one side of a SIGTERM and carried out on the other.  Once
shutdown has begun no worker is spawned, and workers still alive after
``drain_delay + shutdown_timeout`` are killed, so the parent always exits.

A worker that keeps failing at start (a broken certificate on disk, say) is
restarted with exponential back-off, and each distinct reason is logged once.
A replacement reads the files as they are now (gateway/worker.py).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass

from gateway.config.load import GatewayConfig
from gateway.ops.logs import configure_logging
from gateway.worker import START_FAILED, forked_worker_main, read_report, run_worker

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client itself

log = logging.getLogger("gateway.supervisor")

BACKOFF_MIN = 0.25  # seconds before restarting a worker that just died
BACKOFF_MAX = 30.0  # the longest wait between two attempts while start keeps failing
STABLE_AFTER = 10.0  # a worker that ran this long had started: its death resets the back-off
KILL_MARGIN = 5.0  # past drain_delay + shutdown_timeout, remaining workers get SIGKILL

_FORWARDED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_HANDLED = (*_FORWARDED, signal.SIGCHLD)


def _multiprocess_metrics_dir() -> str:
    """A fresh directory for the workers' metric files, removed at exit."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        return existing
    directory = tempfile.mkdtemp(prefix="mtls-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    atexit.register(shutil.rmtree, directory, True)
    return directory


def serve(config: GatewayConfig, *, workers: int = 1) -> int:
    configure_logging(config.logging)
    if workers == 1:
        return run_worker(config, reuse_port=False)
    # prometheus-client picks its multiprocess value store when it is first
    # imported, so the directory must be in the environment before that.
    _multiprocess_metrics_dir()
    # Validate everything in the parent first, so a bad file fails once, clearly.
    from gateway.runtime import assemble

    assemble(config)
    return Supervisor(config, workers).run()


@dataclass
class _Slot:
    index: int
    pid: int | None = None
    report_fd: int | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive deaths soon after start
    restart_at: float | None = None


def _describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(self, config: GatewayConfig, workers: int) -> None:
        self._config = config
        self._slots = [_Slot(i) for i in range(workers)]
        self._by_pid: dict[int, _Slot] = {}
        self._signals: list[int] = []
        self._stopping = False
        self._kill_at = 0.0
        self._last_reason: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        # The lifeline: only the supervisor holds the write end, so when it is
        # gone (SIGKILL, OOM killer) every worker reads EOF and drains and
        # exits instead of serving on as an orphan nobody supervises.
        self._lifeline_r, self._lifeline_w = os.pipe()

    # --------------------------------------------------------------- the loop

    def run(self) -> int:
        from prometheus_client import multiprocess

        for sig in _HANDLED:
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for slot in self._slots:
                self._spawn(slot)
            while True:
                self._handle_signals()
                for pid, status in self._reap():
                    # Keep its counters in the sums, drop its live gauges.
                    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
                    self._exited(pid, status)
                if self._stopping and not self._by_pid:
                    break
                now = time.monotonic()
                if self._stopping and now >= self._kill_at:
                    self._kill_remaining()
                if not self._stopping:
                    for slot in self._slots:
                        if slot.restart_at is not None and now >= slot.restart_at:
                            self._spawn(slot)
                self._sleep(self._next_deadline())
        finally:
            signal.set_wakeup_fd(-1)
            for sig in _HANDLED:
                signal.signal(sig, signal.SIG_DFL)
        log.info("stopped")
        return 0

    def _on_signal(self, sig: int, _frame: object) -> None:
        self._signals.append(sig)  # the loop acts on it; the wakeup fd ends its sleep

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue
            if sig in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
                self._begin_shutdown(sig)
            elif sig == signal.SIGHUP and not self._stopping:
                log.info("SIGHUP: workers reload their files")
                self._signal_workers(sig)

    def _begin_shutdown(self, sig: int) -> None:
        self._stopping = True
        limits = self._config.limits
        self._kill_at = (
            time.monotonic() + limits.drain_delay + limits.shutdown_timeout + KILL_MARGIN
        )
        for slot in self._slots:
            slot.restart_at = None  # nothing is spawned from here on
        log.info(
            "shutting down (%s): stopping %d worker(s)",
            signal.Signals(sig).name,
            len(self._by_pid),
        )
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, sig: int) -> None:
        for pid in self._by_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill_remaining(self) -> None:
        for pid, slot in self._by_pid.items():
            log.error(
                "worker %d (pid %d) still running at the shutdown deadline; killed", slot.index, pid
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._kill_at = float("inf")  # once; the loop then reaps them

    def _reap(self) -> list[tuple[int, int]]:
        exited: list[tuple[int, int]] = []
        while self._by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self._by_pid:
                exited.append((pid, status))
        return exited

    def _next_deadline(self) -> float:
        times = [s.restart_at for s in self._slots if s.restart_at is not None]
        if self._stopping:
            times.append(self._kill_at)
        return min(times, default=float("inf"))

    def _sleep(self, deadline: float) -> None:
        # Bounded: a SIGCHLD that raced with the wakeup fd is still reaped soon.
        timeout = min(max(0.0, deadline - time.monotonic()), 1.0)
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    # ---------------------------------------------------------------- workers

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_at = None
        report_r, report_w = os.pipe()
        # Signals stay blocked across the fork: the child must not run the
        # parent's handlers, and the parent must know the pid before it can
        # act on a SIGTERM that arrives meanwhile.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(report_r)
                    signal.set_wakeup_fd(-1)
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    os.close(self._lifeline_w)
                    for sig in _HANDLED:
                        signal.signal(sig, signal.SIG_DFL)
                    # Still blocked: a SIGTERM that arrives while the worker
                    # starts waits until serve_forever has its handler (it
                    # unblocks them), so it drains instead of dying mid-start.
                    code = forked_worker_main(self._config, report_w, self._lifeline_r)
                finally:
                    os._exit(code)
            os.close(report_w)
            slot.pid, slot.report_fd, slot.started_at = pid, report_r, time.monotonic()
            self._by_pid[pid] = slot
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _exited(self, pid: int, status: int) -> None:
        slot = self._by_pid.pop(pid)
        reason = read_report(slot.report_fd) if slot.report_fd is not None else None
        if slot.report_fd is not None:
            os.close(slot.report_fd)
        slot.pid = slot.report_fd = None
        if self._stopping:
            log.info("worker %d (pid %d) %s", slot.index, pid, _describe_exit(status))
            return
        failed_at_start = (
            os.waitstatus_to_exitcode(status) == START_FAILED
            or time.monotonic() - slot.started_at < STABLE_AFTER
        )
        slot.failures = slot.failures + 1 if failed_at_start else 0
        delay = min(BACKOFF_MIN * 2 ** max(0, slot.failures - 1), BACKOFF_MAX)
        slot.restart_at = time.monotonic() + delay
        what = f"failed to start: {reason}" if reason else _describe_exit(status)
        if what != self._last_reason:
            self._last_reason = what
            log.error("worker %d (pid %d) %s; restarting in %.2gs", slot.index, pid, what, delay)
        else:
            # The reason was logged already; this only says the loop is still going.
            log.warning(
                "worker %d (pid %d) stopped again, as logged above (attempt %d); restarting in %.2gs",
                slot.index,
                pid,
                slot.failures,
                delay,
            )
