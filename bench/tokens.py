"""Token endpoint throughput: tokens/s over keep-alive mTLS, one worker, per algorithm.

For each algorithm this prepares a directory (dev PKI, key, registry, config),
starts ``mtls-gateway serve`` on it as a subprocess, drives ``POST
/connect/token`` with aiohttp over a fixed pool of keep-alive mTLS connections
for N seconds, and prints tokens/s beside ``openssl speed``'s signing rate on
the same machine: the physical limit for one core.

The load generator shares the machine: the gateway's own CPU use is printed
too (from /proc), so a client-bound run is visible as a server below 100 %.

    python bench/tokens.py [--seconds 10] [--connections 32] [--algs ES256 RS256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.cli.devpki import DevPki, init_dev_pki
from gateway.oauth.keys import generate_signing_key

# openssl speed's names for the primitive behind each JWS algorithm.  RS256
# keys here are RSA-2048 so the comparison is like for like (`keys generate`
# makes RSA-3072, about 3x slower to sign).
OPENSSL_ALGS = {"ES256": "ecdsap256", "RS256": "rsa2048"}
_OPENSSL_LINES = {
    "ecdsap256": re.compile(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)"),
    "rsa2048": re.compile(r"^rsa 2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", re.MULTILINE),
}
CLIENT_ID = "bench.client"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    alg: str
    tokens: int
    errors: int
    seconds: float
    server_cpu: float  # CPU-seconds used by the gateway during the run

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_key(path: Path, alg: str) -> None:
    if alg != "RS256":
        generate_signing_key(path, alg)
        return
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# alg: RS256\n{pem}")


def prepare(directory: Path, pki: DevPki, alg: str, port: int, log_level: str) -> Path:
    directory.mkdir()
    write_key(directory / "signing.pem", alg)
    (directory / "clients.yaml").write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {
                        "client_id": CLIENT_ID,
                        "allowed_grant_types": ["client_credentials"],
                        "allowed_scopes": ["api1"],
                        "secrets": [{"type": "X509CertificateName", "value": pki.client.subject}],
                    }
                ]
            }
        )
    )
    config = {
        "issuer": f"https://localhost:{port}",
        "listeners": [
            {
                "bind": f"127.0.0.1:{port}",
                "tls": {
                    "cert": str(pki.server_cert),
                    "key": str(pki.server_key),
                    "client_ca": str(pki.ca_cert),
                },
            }
        ],
        "admin": {"bind": f"127.0.0.1:{free_port()}"},
        "registry": {"kind": "yaml", "path": "clients.yaml"},
        "tokens": {"signing_keys": ["signing.pem"], "lifetime": 3600},
        "routes": [{"prefix": "/", "upstream": "http://127.0.0.1:9", "auth": "client"}],
        "logging": {"level": log_level, "format": "json"},
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def wait_ready(url: str, context: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"gateway exited with status {proc.returncode}")
            try:
                async with session.get(url + "/.well-known/openid-configuration") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("gateway did not become ready in 30 s")


async def drive(
    url: str,
    context: ssl.SSLContext,
    server_cpu: Callable[[], float],
    *,
    connections: int,
    seconds: float,
    warmup: float,
) -> tuple[int, int, float, float]:
    """Each worker holds one keep-alive connection and requests tokens back to back.

    Returns (tokens, errors, elapsed seconds, server CPU-seconds) for the
    measured window only: handshakes and first requests fall in the warm-up.
    """
    body = f"grant_type=client_credentials&client_id={CLIENT_ID}&scope=api1".encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    counts = {"ok": 0, "errors": 0}
    measuring = False
    stop = False
    connector = aiohttp.TCPConnector(ssl=context, limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not stop:
                async with session.post(url + "/connect/token", data=body, headers=headers) as r:
                    await r.read()
                    if measuring:
                        counts["ok" if r.status == 200 else "errors"] += 1

        tasks = [asyncio.create_task(worker()) for _ in range(connections)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu_start, started = server_cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        measuring = False
        cpu_used, elapsed = server_cpu() - cpu_start, time.monotonic() - started
        stop = True
        await asyncio.gather(*tasks)
    return counts["ok"], counts["errors"], elapsed, cpu_used


async def measure(
    alg: str,
    url: str,
    context: ssl.SSLContext,
    proc: subprocess.Popen[bytes],
    args: argparse.Namespace,
) -> Result:
    await wait_ready(url, context, proc)
    ok, errors, elapsed, cpu = await drive(
        url,
        context,
        lambda: cpu_seconds(proc.pid),
        connections=args.connections,
        seconds=args.seconds,
        warmup=args.warmup,
    )
    return Result(alg, ok, errors, elapsed, cpu)


def run_one(root: Path, pki: DevPki, alg: str, args: argparse.Namespace) -> Result:
    port = free_port()
    config = prepare(root / alg, pki, alg, port, args.log_level)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(pki.client.cert, pki.client.key)
    url = f"https://localhost:{port}"
    with (root / f"{alg}.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "1"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            return run_async(measure(alg, url, context, proc, args))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_async(coro: Coroutine[Any, Any, Result]) -> Result:
    """uvloop for the load generator too, where installed: the client shares the CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def openssl_sign_rates(algs: list[str], seconds: int) -> dict[str, float]:
    names = [OPENSSL_ALGS[a] for a in algs]
    if shutil.which("openssl") is None:
        return {}
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), *names],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rates: dict[str, float] = {}
    for alg, name in zip(algs, names, strict=True):
        match = _OPENSSL_LINES[name].search(out)
        if match:
            rates[alg] = float(match.group(1))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per algorithm")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32, help="keep-alive mTLS connections")
    parser.add_argument("--algs", nargs="+", default=["ES256", "RS256"], choices=OPENSSL_ALGS)
    parser.add_argument(
        "--log-level", default="INFO", help="gateway log level (INFO logs each token)"
    )
    parser.add_argument("--openssl-seconds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        root = Path(tmp)
        pki = init_dev_pki(root / "pki")
        results = [run_one(root, pki, alg, args) for alg in args.algs]
    limits = openssl_sign_rates(args.algs, args.openssl_seconds)

    load = os.getloadavg()[0]
    print(
        f"tokens/s, 1 worker, {args.connections} keep-alive mTLS connections, "
        f"{args.seconds:g} s each, gateway log level {args.log_level}; "
        f"{os.cpu_count()} CPUs shared with the load generator, load average {load:.2f}"
    )
    print(
        f"{'alg':<6} {'tokens/s':>9} {'errors':>7} {'gw CPU':>7} {'per CPU-s':>10}"
        f" {'openssl sign/s':>15} {'ratio':>6}"
    )
    for r in results:
        limit = limits.get(r.alg)
        ratio = f"{r.rate / limit:6.0%}" if limit else f"{'-':>6}"
        limit_text = f"{limit:15,.0f}" if limit else f"{'-':>15}"
        busy = r.server_cpu / r.seconds
        # Below ~95 % the gateway was starved (shared machine): per CPU-s is the fairer figure.
        per_cpu = f"{r.tokens / r.server_cpu:10,.0f}" if r.server_cpu else f"{'-':>10}"
        print(f"{r.alg:<6} {r.rate:9,.0f} {r.errors:7d} {busy:7.0%} {per_cpu} {limit_text} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
