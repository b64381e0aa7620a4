"""``serve --workers 2``: ports shared, a killed worker restarted, metrics summed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
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
        assert await requests_counted(admin) >= served  # summed, whichever worker answers

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
