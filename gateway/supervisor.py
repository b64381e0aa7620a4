"""``serve``: one process, or N worker processes sharing the ports (SO_REUSEPORT).

With N workers the parent binds nothing itself: each worker binds every port
with SO_REUSEPORT and the kernel spreads connections.  The parent restarts a
worker that dies and passes SIGHUP/SIGTERM on to all of them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time

from gateway.config import GatewayConfig
from gateway.logs import configure_logging

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client itself

log = logging.getLogger("gateway.supervisor")

RESTART_BACKOFF_SECONDS = 1.0


def _run_worker(config: GatewayConfig, reuse_port: bool) -> int:
    from gateway.runtime import assemble
    from gateway.server import serve_forever

    gateway = assemble(config)

    async def main() -> int:
        await serve_forever(gateway, reuse_port=reuse_port)
        return 0

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


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
        return _run_worker(config, reuse_port=False)
    # prometheus-client picks its multiprocess value store when it is first
    # imported, so the directory must be in the environment before that.
    _multiprocess_metrics_dir()
    # Validate everything in the parent first, so a bad file fails once, clearly.
    from gateway.runtime import assemble

    assemble(config)
    from prometheus_client import multiprocess

    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                # The parent's log-writer thread did not survive the fork.
                configure_logging(config.logging)
                code = _run_worker(config, reuse_port=True)
            finally:
                os._exit(code)
        children[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for slot in range(workers):
        spawn(slot)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        # Keep its counters in the sums, drop its live gauges.
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if not stopping:
            log.error("worker %d (pid %d) exited with status %d; restarting", slot, pid, status)
            time.sleep(RESTART_BACKOFF_SECONDS)
            spawn(slot)
    return 0
