"""Registry lookup cost with 1,000 vs 1,000,000 clients in Redis, cache hit vs forced miss.

Starts a throwaway redis-server, loads N synthetic clients (thumbprint pins)
plus the dev PKI's client (by DN) for each N side by side, then measures, in
alternating rounds so that other load on the machine hits every N alike:

* proxied req/s through a real ``mtls-gateway serve`` process, on keep-alive
  connections and with a new TLS connection per request (the registry is
  consulted once per connection, so the second is where a lookup shows);
* ``RedisRegistry.match`` latency in this process: cache hit, and a forced
  miss (cache dropped before every lookup: one Lua round trip to Redis).

Usage: python bench/registry_lookup.py [--sizes 1000,1000000] [--seconds 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.cli.devpki import DevPki, init_dev_pki  # noqa: E402
from gateway.cli.echo import create_echo_app  # noqa: E402
from gateway.oauth.keys import generate_signing_key  # noqa: E402
from gateway.registry.config import RegistryConfig  # noqa: E402
from gateway.registry.model import Client, Secret, parse_client  # noqa: E402
from gateway.registry.redis_store import RedisRegistry  # noqa: E402
from gateway.trust.identity import CertificateIdentity, identity_from_der  # noqa: E402


def prefix_for(n: int) -> str:
    return f"bench-{n}:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {limit:g}s")
        time.sleep(0.05)


def answers(port: int, payload: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(payload)
            return expect in s.recv(256)
    except OSError:
        return False


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: answers(port, b"PING\r\n", b"+PONG"), "redis-server start")
    return process, f"redis://127.0.0.1:{port}/0"


def registry_config(url: str, prefix: str) -> RegistryConfig:
    return RegistryConfig(
        kind="redis",
        path=None,
        url=url,
        key_prefix=prefix,
        max_stale=60.0,
        cache_size=100_000,
        command_timeout=30.0,
    )


def synthetic_clients(n: int, dev: DevPki) -> list[Client]:
    """N thumbprint-pinned clients, built directly (parse_client would dominate the load)."""
    clients = [
        parse_client(
            {
                "client_id": "mtls.client",
                "allowed_scopes": ["api1"],
                "secrets": [{"type": "X509CertificateName", "value": dev.client.subject}],
            }
        )
    ]
    for i in range(n - 1):
        tp = secrets.token_hex(20)
        clients.append(
            Client(
                client_id=f"client-{i:07d}",
                secrets=(Secret(type="X509CertificateThumbprint", value=tp, match_value=tp),),
                allowed_scopes=("api1",),
            )
        )
    return clients


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_gateway(
    work: Path, dev: DevPki, redis_url: str, prefix: str, upstream_port: int
) -> GatewayProcess:
    work.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    key = work / "signing.pem"
    if not key.exists():
        generate_signing_key(key, "ES256")
    config = {
        "issuer": f"https://localhost:{port}",
        "listeners": [
            {
                "bind": f"127.0.0.1:{port}",
                "tls": {
                    "cert": str(dev.server_cert),
                    "key": str(dev.server_key),
                    "client_ca": str(dev.ca_cert),
                },
            }
        ],
        "admin": {"bind": f"127.0.0.1:{admin_port}"},
        "registry": {"kind": "redis", "url": redis_url, "key_prefix": prefix},
        "tokens": {"signing_keys": [str(key)]},
        "routes": [
            {"prefix": "/", "upstream": f"http://127.0.0.1:{upstream_port}", "auth": "client"}
        ],
        "logging": {"level": "WARNING", "format": "text", "access_log": False},
    }
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLS_GATEWAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=ROOT, env=env
    )
    ready = b"GET /readyz HTTP/1.0\r\n\r\n"
    wait_for(lambda: answers(admin_port, ready, b" 200 "), "gateway readiness")
    return GatewayProcess(process, port, admin_port)


async def proxied_rps(
    gw: GatewayProcess, ctx: ssl.SSLContext, *, seconds: float, concurrency: int, keep_alive: bool
) -> float:
    url = f"https://localhost:{gw.port}/bench"
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency, force_close=not keep_alive)
    done = 0
    failed = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1
                    else:
                        failed += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    if failed:
        raise SystemExit(f"bench: {failed} requests were not 200")
    return done / elapsed


async def lookup_latency(
    registry: RedisRegistry, identity: CertificateIdentity, *, miss: bool, rounds: int
) -> list[float]:
    samples: list[float] = []
    await registry.match(identity, exact_only=False)  # warm: scripts loaded, cache filled
    for _ in range(rounds):
        if miss:
            registry.reload()  # drops the cache: the next match asks Redis
        start = time.perf_counter()
        result = await registry.match(identity, exact_only=False)
        samples.append(time.perf_counter() - start)
        assert result.client is not None
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1e6
    p99 = ordered[int(len(ordered) * 0.99)] * 1e6
    return f"mean {statistics.fmean(samples) * 1e6:7.1f} us  p50 {p50:7.1f} us  p99 {p99:7.1f} us"


async def redis_memory(registry: RedisRegistry) -> str:
    info: dict[str, Any] = await registry._redis.info("memory")
    return str(info.get("used_memory_human", "?"))


async def run(sizes: list[int], seconds: float, rounds: int, concurrency: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mtls-bench-"))
    redis_process, redis_url = start_redis(work)
    dev = init_dev_pki(work / "pki")
    ctx = ssl.create_default_context(cafile=str(dev.ca_cert))
    ctx.load_cert_chain(dev.client.cert, dev.client.key)
    identity = identity_from_der(ssl.PEM_cert_to_DER_cert(dev.client.cert.read_text()))
    runner = web.AppRunner(create_echo_app(), access_log=None)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    gateways: dict[int, GatewayProcess] = {}
    loaded: dict[int, tuple[float, str]] = {}
    try:
        # Every size side by side in one Redis (a prefix each), one gateway per
        # size; measurements then alternate between them, so load from anything
        # else on the machine falls on both alike.
        for n in sizes:
            loader = RedisRegistry(registry_config(redis_url, prefix_for(n)))
            clients = synthetic_clients(n, dev)
            start = time.monotonic()
            await loader.replace_all(clients)
            loaded[n] = (time.monotonic() - start, await redis_memory(loader))
            del clients
            await loader.close()
            print(
                f"[{n:>9,} clients] written and swapped in in {loaded[n][0]:.1f}s;"
                f" redis used_memory now {loaded[n][1]}"
            )
            gateways[n] = start_gateway(work / str(n), dev, redis_url, prefix_for(n), upstream_port)

        keep: dict[int, list[float]] = {n: [] for n in sizes}
        fresh: dict[int, list[float]] = {n: [] for n in sizes}
        for n in sizes:  # warm-up
            await proxied_rps(gateways[n], ctx, seconds=1, concurrency=concurrency, keep_alive=True)
        for r in range(rounds):
            order = sizes if r % 2 == 0 else list(reversed(sizes))
            for n in order:
                keep[n].append(
                    await proxied_rps(
                        gateways[n], ctx, seconds=seconds, concurrency=concurrency, keep_alive=True
                    )
                )
                fresh[n].append(
                    await proxied_rps(
                        gateways[n], ctx, seconds=seconds, concurrency=concurrency, keep_alive=False
                    )
                )
            print(
                f"  round {r + 1}/{rounds}: "
                + "  ".join(f"{n:,}: {keep[n][-1]:.0f} / {fresh[n][-1]:.0f} req/s" for n in sizes)
            )
        for gw in gateways.values():
            gw.stop()
        gateways.clear()

        hits: dict[int, list[float]] = {}
        misses: dict[int, list[float]] = {}
        for n in sizes:
            registry = RedisRegistry(registry_config(redis_url, prefix_for(n)))
            await registry.start()
            hits[n] = await lookup_latency(registry, identity, miss=False, rounds=20_000)
            misses[n] = await lookup_latency(registry, identity, miss=True, rounds=5_000)
            await registry.close()
            print(f"[{n:>9,} clients] match() cache hit:   {summary(hits[n])}")
            print(f"[{n:>9,} clients] match() forced miss: {summary(misses[n])}")
    finally:
        for gw in gateways.values():
            gw.stop()
        await runner.cleanup()
        redis_process.terminate()
        redis_process.wait()
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median
    print()
    print(f"medians of {rounds} alternating rounds of {seconds:g}s, {concurrency} connections")
    print(
        "| clients | import | req/s keep-alive | req/s new TLS conn each"
        " | match() hit p50 | match() miss p50 |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        print(
            f"| {n:,} | {loaded[n][0]:.1f} s | {median(keep[n]):.0f} | {median(fresh[n]):.0f}"
            f" | {median(hits[n]) * 1e6:.1f} us | {median(misses[n]) * 1e6:.1f} us |"
        )
    if len(sizes) == 2:
        small, large = sizes
        for label, data in (("keep-alive", keep), ("new connection", fresh)):
            delta = (median(data[large]) - median(data[small])) / median(data[small]) * 100
            print(f"{label}: {large:,} vs {small:,} clients: {delta:+.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="per req/s measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per size")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(sizes, args.seconds, args.rounds, args.concurrency))
    else:
        uvloop.run(run(sizes, args.seconds, args.rounds, args.concurrency))


if __name__ == "__main__":
    main()
