"""One worker of ``serve``: build the gateway from the files as they are now, and run it.

A worker forked by the supervisor (``--workers N``) reads gateway.yaml again
instead of inheriting the parent's start-up copy: the running workers may have
reloaded routes since, and a replacement must refuse what they refuse.  Its
reloader's baseline is the file it read, so an edit made while it started is
applied at once rather than never.

It tells the supervisor through a pipe why it could not start (one line), so
that the supervisor can back off and log each distinct reason once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from gateway.config.load import GatewayConfig, load_config
from gateway.config.reader import ConfigError
from gateway.lifecycle import FileSignature, signature
from gateway.ops.logs import configure_logging, stop_logging

log = logging.getLogger("gateway.supervisor")

START_FAILED = 78  # EX_CONFIG (sysexits.h): the files on disk do not make a gateway


def run_worker(
    config: GatewayConfig,
    *,
    reuse_port: bool,
    read_as: FileSignature | None = None,
    lifeline: int | None = None,
) -> int:
    """Assemble and serve ``config`` in this process until SIGTERM/SIGINT.

    ``read_as``: the config file's signature when ``config`` was read from it.
    ``lifeline``: a pipe end that reads EOF once the supervisor is gone.
    """
    from gateway.runtime import assemble
    from gateway.server import serve_forever

    before = signature([config.source]) if read_as is None else read_as
    gateway = assemble(config)
    if signature([config.source]) != before and gateway.config_reloader is not None:
        gateway.config_reloader.reload()  # edited while this worker was starting

    async def main() -> int:
        await serve_forever(gateway, reuse_port=reuse_port, lifeline=lifeline)
        return 0

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def forked_worker_main(parent: GatewayConfig, report_fd: int, lifeline: int | None = None) -> int:
    """The body of a forked worker; returns its exit status (the caller ``os._exit``s)."""
    # The parent's log-writer thread did not survive the fork.
    configure_logging(parent.logging)
    code = 1
    try:
        try:
            read_as = signature([parent.source])
            config = load_config(parent.source)
            if config.logging != parent.logging:
                configure_logging(config.logging)
            code = run_worker(config, reuse_port=True, read_as=read_as, lifeline=lifeline)
        except ConfigError as exc:
            _report(report_fd, "; ".join(exc.problems))
            code = START_FAILED
        except Exception as exc:
            log.exception("worker failed")
            _report(report_fd, f"{type(exc).__name__}: {exc}")
    finally:
        # os._exit runs no atexit hooks: write the queued lines ("shutting
        # down", "stopped") before the process is gone.
        stop_logging()
        with contextlib.suppress(OSError):
            os.close(report_fd)
    return code


def _report(fd: int, reason: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, reason.replace("\n", " ").encode("utf-8", "replace")[:4000] + b"\n")


def read_report(fd: int) -> str | None:
    """The reason a worker gave for not starting (its pipe is at EOF once it exited)."""
    chunks: list[bytes] = []
    os.set_blocking(fd, False)  # never hang the supervisor on a pipe someone still holds
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    return text or None
