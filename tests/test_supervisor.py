"""``serve --workers 2``: ports shared, a killed worker restarted, metrics summed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Upstream, free_port, name_secret, registry_client, write_config
from tests.pki import Issued, Pki


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


async def requests_counted(admin: int) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin}/metrics") as r,
    ):
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mtls_gateway_requests_total"
    )


async def test_two_workers_restart_and_sum_metrics(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    port, admin = free_port(), free_port()
    config_path, _ = write_config(
        tmp_path,
        pki,
        clients=[
            registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))
        ],
        routes=[{"prefix": "/", "upstream": echo_upstream.url}],
        extra={"admin": {"bind": f"127.0.0.1:{admin}"}},
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["MTLS_GATEWAY_LISTENERS__0__BIND"] = f"127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers: set[int] = set()
        for _ in range(100):
            workers = children_of(process.pid)
            if len(workers) == 2:
                try:
                    await requests_counted(admin)
                    break
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.1)
        assert len(workers) == 2, workers

        context = pki.client_context(client_cert)
        served = 0
        for _ in range(20):  # new connections: the kernel spreads them over both workers
            connector = aiohttp.TCPConnector(ssl=context, force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"https://localhost:{port}/x") as r,
            ):
                assert r.status == 200
                served += 1
        # Summed, whichever worker answers: the other worker publishes each second.
        counted = 0.0
        for _ in range(30):
            counted = await requests_counted(admin)
            if counted >= served:
                break
            await asyncio.sleep(0.1)
        assert counted >= served

        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        replaced: set[int] = set()
        for _ in range(100):
            replaced = children_of(process.pid)
            if len(replaced) == 2 and victim not in replaced:
                break
            await asyncio.sleep(0.1)
        assert len(replaced) == 2 and victim not in replaced, "the killed worker was not restarted"
        await asyncio.sleep(0.5)
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"https://localhost:{port}/after") as r,
        ):
            assert r.status == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


# ------------------------------------------------------------ lifecycle (issue 15)

CLIENT_DN = "CN=client, OU=production, O=company"
SHUTDOWN_TIMEOUT = 5.0


class Served:
    """``serve --workers 2`` as a real process, its stderr in a file we can read while it runs."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path, self.port, self.log_path = config_path, port, log_path
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["MTLS_GATEWAY_LISTENERS__0__BIND"] = f"127.0.0.1:{port}"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config_path),
                    "--workers",
                    "2",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        return children_of(self.process.pid)

    async def wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"serve exited early:\n{self.log}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.log}"
            await asyncio.sleep(0.05)

    async def statuses(self, context: ssl.SSLContext, count: int) -> dict[int, int]:
        """``count`` requests, each on a new connection: the kernel spreads them over the workers."""
        seen: dict[int, int] = {}
        for _ in range(count):
            connector = aiohttp.TCPConnector(ssl=context, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                try:
                    async with session.get(f"https://localhost:{self.port}/x") as r:
                        seen[r.status] = seen.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    seen[0] = seen.get(0, 0) + 1
        return seen

    async def ready(self, context: ssl.SSLContext) -> None:
        await self.wait_for(lambda: len(self.workers()) == 2, "two workers")
        deadline = time.monotonic() + 20
        while (await self.statuses(context, 1)).get(0):
            assert time.monotonic() < deadline, self.log
            await asyncio.sleep(0.1)

    async def replace_worker(self) -> int:
        before = self.workers()
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        await self.wait_for(
            lambda: len(self.workers()) == 2 and victim not in self.workers(), "a replacement"
        )
        return victim

    def close(self) -> None:
        if self.process.poll() is None:
            # SIGKILL, as an OOM killer would: the workers must not outlive it.
            self.process.kill()
            self.process.wait(timeout=10)


def _gateway_processes(config_path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(config_path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _config(tmp_path: Path, pki: Pki, upstream: Upstream, **extra: Any) -> Path:
    config_path, _ = write_config(
        tmp_path,
        pki,
        clients=[
            registry_client("mtls.client", name_secret(CLIENT_DN)),
            registry_client("other", name_secret("CN=other")),
        ],
        routes=[
            {"prefix": "/", "upstream": upstream.url, "auth": "client", "clients": ["mtls.client"]}
        ],
        extra={
            "limits": {"drain_delay": 0, "shutdown_timeout": SHUTDOWN_TIMEOUT},
            **extra,
        },
    )
    return config_path


async def test_a_replacement_worker_serves_the_routes_as_edited(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    config_path = _config(tmp_path, pki, echo_upstream)
    served = Served(config_path, free_port(), tmp_path / "serve.log")
    context = pki.client_context(client_cert)
    try:
        await served.ready(context)
        assert await served.statuses(context, 10) == {200: 10}

        config = yaml.safe_load(config_path.read_text())
        config["routes"][0]["clients"] = ["other"]  # tightened live: mtls.client is out
        config_path.write_text(yaml.safe_dump(config))
        deadline = time.monotonic() + 15
        while (seen := await served.statuses(context, 10)) != {403: 10}:
            assert time.monotonic() < deadline, (seen, served.log)
            await asyncio.sleep(0.2)
        # Connections may all have landed on one worker: give the other its poll (1 s) too.
        await asyncio.sleep(1.5)
        assert await served.statuses(context, 20) == {403: 20}

        await served.replace_worker()
        await served.ready(context)
        # Before: the replacement served its start-up routes ({200: 22, 403: 18}).
        assert await served.statuses(context, 40) == {403: 40}
    finally:
        served.close()


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3, 0.8])
async def test_sigterm_right_after_a_worker_death_stops_everything(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream, delay: float
) -> None:
    config_path = _config(tmp_path, pki, echo_upstream)
    served = Served(config_path, free_port(), tmp_path / "serve.log")
    context = pki.client_context(client_cert)
    try:
        await served.ready(context)
        victim = sorted(served.workers())[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(delay)
        served.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while served.process.poll() is None:
            assert time.monotonic() - started < SHUTDOWN_TIMEOUT, served.log
            await asyncio.sleep(0.05)
        assert served.process.returncode == 0, served.log
        await asyncio.sleep(0.3)
        assert _gateway_processes(config_path) == [], served.log  # no replacement left serving
        log = served.log
        # The supervisor's own lines, and those of the worker that was still running.
        assert "shutting down (SIGTERM)" in log and log.rstrip().endswith("stopped"), log
        assert "shutting down: draining" in log, log
        assert log.count("logger=gateway message=stopped") >= 1, log
    finally:
        served.close()


async def test_a_worker_failing_at_start_backs_off_and_recovers_when_fixed(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    cert = tmp_path / "server.pem"
    cert.write_bytes(pki.server.cert_path.read_bytes())
    good = cert.read_bytes()
    config_path = _config(tmp_path, pki, echo_upstream)
    config = yaml.safe_load(config_path.read_text())
    config["listeners"][0]["tls"]["cert"] = str(cert)
    config_path.write_text(yaml.safe_dump(config))
    served = Served(config_path, free_port(), tmp_path / "serve.log")
    context = pki.client_context(client_cert)
    try:
        await served.ready(context)
        cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        victim = sorted(served.workers())[0]
        os.kill(victim, signal.SIGKILL)
        await served.wait_for(lambda: served.log.count("as logged above") >= 3, "three retries")
        log = served.log
        reasons = [line for line in log.splitlines() if "failed to start:" in line]
        assert len(reasons) == 1 and "server.pem" in reasons[0], log  # once per distinct reason
        delays = [
            float(line.rsplit("restarting in ", 1)[1].rstrip('"').rstrip("s"))
            for line in log.splitlines()
            if "as logged above" in line
        ]
        assert delays == sorted(delays) and delays[-1] > delays[0], delays  # exponential back-off
        assert await served.statuses(context, 5) == {200: 5}  # the other worker keeps serving

        cert.write_bytes(good)
        failures = served.log.count("as logged above")
        # An attempt already under way may still have read the broken file: at
        # most one more failure, then a worker that stays.
        for _ in range(2):
            await served.wait_for(lambda: len(served.workers()) == 2, "a worker again", 40)
            await asyncio.sleep(1.5)
            if len(served.workers()) == 2:
                break
        assert len(served.workers()) == 2, served.log
        assert served.log.count("as logged above") <= failures + 1, served.log
        assert await served.statuses(context, 10) == {200: 10}
    finally:
        served.close()


async def test_workers_exit_when_the_supervisor_is_killed(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    config_path = _config(tmp_path, pki, echo_upstream)
    served = Served(config_path, free_port(), tmp_path / "serve.log")
    context = pki.client_context(client_cert)
    try:
        await served.ready(context)
        workers = served.workers()
        assert len(workers) == 2
    finally:
        served.close()  # SIGKILL: no chance to stop its workers
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    while _gateway_processes(config_path):
        assert time.monotonic() < deadline, f"orphaned workers: {_gateway_processes(config_path)}"
        await asyncio.sleep(0.1)
    assert "the supervisor is gone: shutting down" in served.log
