"""/metrics of ``serve --workers 2`` after known traffic: every series summed or labelled.

Before gateway.ops.worker_metrics, tls_handshakes_total, connections_open and
connections_refused_total came from whichever worker answered the scrape,
so ``started`` fell short of the connections made whenever the kernel gave
some of them to the other worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Upstream, free_port, name_secret, registry_client, write_config
from tests.pki import Issued, Pki
from tests.test_supervisor import children_of

CONNECTIONS = 24


@dataclass
class TwoWorkers:
    port: int
    admin: int
    supervisor: int
    workers: set[int]


@pytest.fixture
async def two_workers(
    tmp_path: Path, pki: Pki, echo_upstream: Upstream
) -> AsyncIterator[TwoWorkers]:
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
        for _ in range(200):
            workers = children_of(process.pid)
            if len(workers) == 2:
                try:
                    await scrape(admin)
                    break
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.1)
        assert len(workers) == 2, workers
        yield TwoWorkers(port, admin, process.pid, workers)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def scrape(admin: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin}/metrics") as r,
    ):
        assert r.status == 200
        return await r.text()


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_series_are_summed_or_labelled_across_two_workers(
    two_workers: TwoWorkers, pki: Pki, client_cert: Issued
) -> None:
    context = pki.client_context(client_cert)
    for i in range(CONNECTIONS):  # new connections: the kernel spreads them over both workers
        connector = aiohttp.TCPConnector(ssl=context, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            method = session.get if i % 2 else session.post
            async with method(f"https://localhost:{two_workers.port}/x") as r:
                assert r.status == 200
    # Workers that do not answer the scrape publish within a second.
    await asyncio.sleep(1.5)
    for _ in range(6):  # whichever worker answers, the same sums
        text = await scrape(two_workers.admin)
        assert total(text, "mtls_gateway_requests_total", method="GET") == CONNECTIONS // 2
        assert total(text, "mtls_gateway_requests_total", method="POST") == CONNECTIONS // 2
        assert total(text, "mtls_gateway_tls_handshakes_total", outcome="started") == CONNECTIONS
        assert total(text, "mtls_gateway_tls_handshakes_total", outcome="completed") == CONNECTIONS
        assert total(text, "mtls_gateway_connections_open", listener="0") == 0
        assert total(text, "mtls_gateway_connections_refused_total", listener="0") == 0
        assert "_created" not in text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        # process_* per process (the supervisor too), labelled with its pid:
        # sums would hide the one in trouble.
        pids = {s.labels["pid"] for s in families["process_resident_memory_bytes"].samples}
        assert pids == {str(pid) for pid in {two_workers.supervisor, *two_workers.workers}}
        assert families["process_cpu_seconds"].type == "counter"
        expiry = families["mtls_gateway_certificate_expiry_timestamp_seconds"].samples
        assert expiry and all(s.labels["subject"] for s in expiry)
        assert any(s.labels["kind"] == "server" and "CN=" in s.labels["subject"] for s in expiry)
