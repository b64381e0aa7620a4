"""Soak run: one gateway process under steady mixed load for N minutes, with rotations.

Starts ``mtls-gateway serve`` (one worker, YAML registry) in front of
``bench/upstream.py`` and drives it from this process:

* keep-alive proxied requests (GET, and POST with a 4 KiB body);
* a new TLS connection per request (full mTLS handshakes);
* token requests, each followed by calls to an ``auth: token`` route;
* expected refusals: a CA-issued but unregistered certificate (403), an
  untrusted certificate (TLS alert), no certificate (401), a forged token (401);

and every ``--rotate-every`` seconds rewrites the registry (a client added or
removed, atomically) and rotates the server certificate and key the way the
kubelet updates a mounted Secret (a new directory, then one atomic ``..data``
symlink swap).  Each new handshake checks which server certificate it got,
so a rotation that is not picked up shows as an error too.

With ``--redis`` the registry lives in a ``redis-server`` this script starts;
halfway through, Redis is killed and restarted (empty, then re-seeded), as in
a crash: registered callers keep being served from the gateway's cache, and
unregistered ones get 503 instead of 403 until it is back.

Every 10 s it samples the gateway's RSS and open file descriptors, and the
request and error counts.  At the end it prints a verdict: no error other
than the expected refusals (no 5xx, no failed or lost request, no failed
reload, no ERROR log line), RSS growth from the first sample after warm-up
below ``--max-rss-growth`` (10 %), and a stable fd count.

    python3 bench/soak.py                      # 10 minutes
    python3 bench/soak.py --minutes 3 --out /tmp/soak
    python3 bench/soak.py --minutes 3 --redis     # Redis registry, restarted halfway
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli.devpki import init_dev_pki
from gateway.oauth.keys import generate_signing_key
from gateway.registry.config import RegistryConfig
from gateway.registry.model import parse_client
from gateway.registry.redis_store import RedisRegistry

HERE = Path(__file__).resolve().parent
SAMPLE_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- PKI ----------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue(
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey | None,
    cn: str,
    *,
    server: bool = False,
) -> tuple[bytes, bytes, int]:
    """A leaf (self-signed when no CA is given): PEM cert, PEM key, serial."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "company"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "soak"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key if ca_key is not None else key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial


class SecretVolume:
    """A directory laid out like a mounted Kubernetes Secret: files behind ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.generation = 0

    def write(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        stamp = self.root / f"..{self.generation:04d}"
        stamp.mkdir()
        for name, data in files.items():
            (stamp / name).write_bytes(data)
            (stamp / name).chmod(0o600)
        link = self.root / "..data_tmp"
        link.symlink_to(stamp.name)
        link.replace(self.root / "..data")  # the one atomic step
        for name in files:
            path = self.root / name
            if not path.is_symlink():
                path.symlink_to(f"..data/{name}")

    def path(self, name: str) -> Path:
        return self.root / name


# --- accounting ---------------------------------------------------------------------


@dataclass
class Stats:
    ok: Counter[str] = field(default_factory=Counter)
    refused_as_expected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    server_serials: set[int] = field(default_factory=set)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 20:
            self.error_examples.append(f"{time.strftime('%H:%M:%S')} {kind}: {detail}")

    def total(self) -> int:
        return sum(self.ok.values()) + sum(self.refused_as_expected.values())


@dataclass
class Sample:
    elapsed: float
    rss_kib: int
    fds: int
    requests: int
    errors: int


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Pacer:
    """At most ``rate`` iterations per second for one worker."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        self.next += self.interval
        delay = self.next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            self.next = time.monotonic()  # fell behind: do not burst to catch up


# --- the run ------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    config: Path
    registry: Path
    tls: SecretVolume
    ca_pem: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]
    untrusted: tuple[Path, Path]
    port: int
    admin: int
    upstream_port: int
    client_subject: str = "CN=client, OU=production, O=company"
    redis_port: int | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


REDIS_PREFIX = "soak:"


class RedisProcess:
    """A throwaway redis-server that can be killed (SIGKILL, as a crash) and restarted."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def registry_clients(client_subject: str, extra: bool) -> list[dict[str, Any]]:
    clients: list[dict[str, Any]] = [
        {
            "client_id": "soak.client",
            "allowed_scopes": ["api1"],
            "secrets": [{"type": "X509CertificateName", "value": client_subject}],
        }
    ]
    if extra:
        clients.append(
            {
                "client_id": "soak.extra",
                "allowed_scopes": ["api1"],
                "secrets": [{"type": "X509CertificateThumbprint", "value": "ab" * 20}],
            }
        )
    return clients


def write_registry(path: Path, client_subject: str, extra: bool) -> None:
    clients = registry_clients(client_subject, extra)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"clients": clients}))
    tmp.replace(path)  # atomic, as `mtls-gateway clients` writes


def redis_writer(setup: Setup) -> RedisRegistry:
    return RedisRegistry(
        RegistryConfig(
            kind="redis",
            path=None,
            url=setup.redis_url,
            key_prefix=REDIS_PREFIX,
            max_stale=60.0,
            cache_size=1000,
        )
    )


async def seed_redis(setup: Setup, extra: bool) -> None:
    writer = redis_writer(setup)
    try:
        await writer.replace_all(
            [parse_client(c) for c in registry_clients(setup.client_subject, extra)]
        )
    finally:
        await writer.close()


def prepare(work: Path, *, redis: bool) -> Setup:
    pki = init_dev_pki(work / "pki")
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    def pair(name: str, cert: bytes, key: bytes) -> tuple[Path, Path]:
        cert_path, key_path = work / f"{name}.pem", work / f"{name}.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        return cert_path, key_path

    stranger = pair("stranger", *issue(ca_cert, ca_key, "stranger")[:2])
    untrusted = pair("untrusted", *issue(None, None, "untrusted")[:2])
    tls = SecretVolume(work / "tls")
    cert, key, _ = issue(ca_cert, ca_key, "localhost", server=True)
    tls.write({"tls.crt": cert, "tls.key": key})
    signing = work / "signing.pem"
    generate_signing_key(signing, "ES256")
    registry = work / "clients.yaml"
    write_registry(registry, pki.client.subject, extra=False)
    port, admin, upstream_port = free_port(), free_port(), free_port()
    redis_port = free_port() if redis else None
    registry_config: dict[str, Any] = {"kind": "yaml", "path": str(registry)}
    if redis_port is not None:
        registry_config = {
            "kind": "redis",
            "url": f"redis://127.0.0.1:{redis_port}/0",
            "key_prefix": REDIS_PREFIX,
            "max_stale": 60,
            "connect_timeout": 0.5,
            "command_timeout": 0.5,
        }
    config = {
        "issuer": f"https://localhost:{port}",
        "listeners": [
            {
                "bind": f"127.0.0.1:{port}",
                "tls": {
                    "cert": str(tls.path("tls.crt")),
                    "key": str(tls.path("tls.key")),
                    "client_ca": str(pki.ca_cert),
                    "client_certs": "optional",
                },
            }
        ],
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "registry": registry_config,
        "tokens": {"signing_keys": [str(signing)], "lifetime": 600},
        "routes": [
            {"prefix": "/api", "upstream": f"http://127.0.0.1:{upstream_port}", "auth": "token"},
            {"prefix": "/", "upstream": f"http://127.0.0.1:{upstream_port}", "auth": "client"},
        ],
        "logging": {"format": "json", "level": "INFO", "access_log": False},
    }
    config_path = work / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return Setup(
        work=work,
        config=config_path,
        registry=registry,
        tls=tls,
        ca_pem=pki.ca_cert,
        ca_cert=ca_cert,
        ca_key=ca_key,
        client=(pki.client.cert, pki.client.key),
        stranger=stranger,
        untrusted=untrusted,
        port=port,
        admin=admin,
        upstream_port=upstream_port,
        client_subject=pki.client.subject,
        redis_port=redis_port,
    )


def context(setup: Setup, pair: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(setup.ca_pem))
    if pair is not None:
        ctx.load_cert_chain(*pair)
    return ctx


async def wait_ready(admin_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit("the gateway exited at start (see gateway.stderr)")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(admin_url + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway never became ready")


class Soak:
    def __init__(self, setup: Setup, args: argparse.Namespace, gateway_pid: int) -> None:
        self.setup = setup
        self.args = args
        self.pid = gateway_pid
        self.url = f"https://localhost:{setup.port}"
        self.admin_url = f"http://127.0.0.1:{setup.admin}"
        self.stats = Stats()
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()
        self.current_serial = 0
        self.rotated_at = 0.0
        self.rotations = 0
        self.registry_writes = 0
        self.redis: RedisProcess | None = None
        self.redis_down_until = 0.0  # monotonic; 503 for unknown callers is expected before
        self.expected_503 = 0
        self.redis_outage = ""

    # -- workers ------------------------------------------------------------------

    async def keepalive(self, worker: int, rate: float) -> None:
        pacer = Pacer(rate)
        body = os.urandom(4096)
        connector = aiohttp.TCPConnector(ssl=context(self.setup, self.setup.client), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            i = 0
            while not self.stop.is_set():
                await pacer.wait()
                i += 1
                try:
                    if i % 10 == 0:
                        async with session.post(f"{self.url}/ka/{worker}", data=body) as r:
                            await r.read()
                    else:
                        async with session.get(f"{self.url}/ka/{worker}/{i}") as r:
                            await r.read()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.stats.error("keepalive", f"{type(exc).__name__}: {exc}")
                    continue
                if r.status == 200:
                    self.stats.ok["keepalive"] += 1
                else:
                    self.stats.error("keepalive", f"status {r.status}")

    async def handshakes(self, rate: float) -> None:
        pacer = Pacer(rate)
        ctx = context(self.setup, self.setup.client)
        request = b"GET /new-connection HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        while not self.stop.is_set():
            await pacer.wait()
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.setup.port, ssl=ctx, server_hostname="localhost"
                    )
                    try:
                        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                        writer.write(request)
                        answer = await reader.read()  # Connection: close: to the end
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError, ssl.SSLError):
                            await writer.wait_closed()
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                self.stats.error("handshake", f"{type(exc).__name__}: {exc}")
                continue
            serial = x509.load_der_x509_certificate(der).serial_number
            self.stats.server_serials.add(serial)
            if (
                serial != self.current_serial
                and time.monotonic() - self.rotated_at > self.args.rotation_grace
            ):
                self.stats.error("rotation", "a new handshake still got the old server certificate")
            if answer.startswith(b"HTTP/1.1 200 "):
                self.stats.ok["handshake"] += 1
            else:
                self.stats.error("handshake", f"answer {answer[:40]!r}")

    async def tokens(self, rate: float) -> None:
        pacer = Pacer(rate)
        connector = aiohttp.TCPConnector(ssl=context(self.setup, self.setup.client), limit=1)
        form = {"grant_type": "client_credentials", "client_id": "soak.client"}
        async with aiohttp.ClientSession(connector=connector) as session:
            while not self.stop.is_set():
                await pacer.wait()
                try:
                    async with session.post(f"{self.url}/connect/token", data=form) as r:
                        body = await r.json()
                    if r.status != 200:
                        self.stats.error("token", f"status {r.status}: {body}")
                        continue
                    self.stats.ok["token"] += 1
                    bearer = {"Authorization": f"Bearer {body['access_token']}"}
                    for j in range(self.args.calls_per_token):
                        async with session.get(f"{self.url}/api/{j}", headers=bearer) as r:
                            await r.read()
                        if r.status == 200:
                            self.stats.ok["token-protected"] += 1
                        else:
                            self.stats.error("token-protected", f"status {r.status}")
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self.stats.error("token", f"{type(exc).__name__}: {exc}")

    async def refusals(self, rate: float) -> None:
        pacer = Pacer(rate)
        kinds = ["unregistered", "untrusted", "anonymous", "forged-token"]
        contexts = {
            "unregistered": context(self.setup, self.setup.stranger),
            "untrusted": context(self.setup, self.setup.untrusted),
            "anonymous": context(self.setup, None),
            "forged-token": context(self.setup, self.setup.client),
        }
        i = 0
        while not self.stop.is_set():
            await pacer.wait()
            kind = kinds[i % len(kinds)]
            i += 1
            path, headers, expected = "/refused", {}, {"unregistered": 403, "anonymous": 401}
            if kind == "forged-token":
                path, expected = "/api/forged", {"forged-token": 401}
                headers = {"Authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.e30.AAAA"}
            connector = aiohttp.TCPConnector(ssl=contexts[kind], force_close=True)
            try:
                async with (
                    aiohttp.ClientSession(connector=connector) as session,
                    session.get(self.url + path, headers=headers) as r,
                ):
                    await r.read()
            except (aiohttp.ClientError, OSError) as exc:
                if kind == "untrusted":  # the TLS alert, as expected
                    self.stats.refused_as_expected[kind] += 1
                else:
                    self.stats.error(f"refusal:{kind}", f"{type(exc).__name__}: {exc}")
                continue
            if kind == "untrusted":
                self.stats.error("refusal:untrusted", f"an untrusted certificate got {r.status}")
            elif (
                kind == "unregistered"
                and r.status == 503
                and time.monotonic() < self.redis_down_until
            ):
                # Redis is down: an uncached certificate cannot be decided (fail closed).
                self.expected_503 += 1
                self.stats.refused_as_expected["unregistered (503, Redis down)"] += 1
            elif r.status == expected[kind]:
                self.stats.refused_as_expected[kind] += 1
            else:
                self.stats.error(f"refusal:{kind}", f"status {r.status}, expected {expected[kind]}")

    # -- rotations and sampling ---------------------------------------------------

    def rotate_server_certificate(self) -> None:
        cert, key, serial = issue(self.setup.ca_cert, self.setup.ca_key, "localhost", server=True)
        self.current_serial = serial
        self.rotated_at = time.monotonic()
        self.setup.tls.write({"tls.crt": cert, "tls.key": key})
        self.rotations += 1

    async def chaos(self) -> None:
        subject = "CN=client, OU=production, O=company"
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.rotate_every)
            if self.stop.is_set():
                return
            self.registry_writes += 1
            extra = self.registry_writes % 2 == 1
            if self.setup.redis_port is None:
                write_registry(self.setup.registry, subject, extra=extra)
            elif self.redis is not None and self.redis.process is not None:
                try:
                    await seed_redis(self.setup, extra)
                except Exception as exc:  # Redis may be down right now: that is the test
                    self.stats.error("registry write", f"{type(exc).__name__}: {exc}")
            self.rotate_server_certificate()
            print(
                f"  [{self.elapsed():6.0f}s] registry rewritten, server certificate rotated "
                f"(serial {self.current_serial:x})",
                flush=True,
            )

    async def redis_restart(self) -> None:
        """Halfway through: kill Redis, keep it down for a while, start it empty, re-seed."""
        assert self.redis is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self.args.minutes * 30)
        if self.stop.is_set():
            return
        killed = self.elapsed()
        # From now until a little after it is back, an uncached caller may get 503.
        self.redis_down_until = float("inf")
        self.redis.kill()
        print(f"  [{killed:6.0f}s] Redis killed", flush=True)
        await asyncio.sleep(self.args.redis_outage)
        await asyncio.to_thread(self.redis.start)
        await seed_redis(self.setup, extra=self.registry_writes % 2 == 1)
        back = self.elapsed()
        self.redis_down_until = time.monotonic() + 5.0  # the gateway's resubscribe and backoff
        print(f"  [{back:6.0f}s] Redis restarted (empty) and re-seeded", flush=True)
        self.redis_outage = f"Redis killed at {killed:.0f} s, back and re-seeded at {back:.0f} s"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def sampler(self) -> None:
        while not self.stop.is_set():
            sample = Sample(
                elapsed=self.elapsed(),
                rss_kib=rss_kib(self.pid),
                fds=fd_count(self.pid),
                requests=self.stats.total(),
                errors=sum(self.stats.errors.values()),
            )
            self.samples.append(sample)
            print(
                f"  [{sample.elapsed:6.0f}s] RSS {sample.rss_kib / 1024:7.1f} MiB  fds {sample.fds:4d}"
                f"  requests {sample.requests:8d}  errors {sample.errors}",
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), SAMPLE_SECONDS)

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.admin_url + "/metrics") as r,
        ):
            return await r.text()

    async def guarded(self, worker: Any) -> None:
        """A worker that dies is an error of the run, not a silent gap in the load."""
        try:
            await worker
        except Exception as exc:
            self.stats.error("worker crashed", f"{type(exc).__name__}: {exc}")

    async def run(self) -> None:
        self.started = time.monotonic()
        pem = self.setup.tls.path("tls.crt").read_bytes()
        self.current_serial = x509.load_pem_x509_certificate(pem).serial_number
        args = self.args
        workers = [
            *(
                self.keepalive(w, args.keepalive_rate / args.keepalive_workers)
                for w in range(args.keepalive_workers)
            ),
            self.handshakes(args.handshake_rate),
            self.tokens(args.token_rate),
            self.refusals(args.refusal_rate),
            self.chaos(),
            self.sampler(),
            *([self.redis_restart()] if self.redis is not None else []),
        ]
        tasks = [asyncio.create_task(self.guarded(w)) for w in workers]
        try:
            await asyncio.sleep(args.minutes * 60)
        finally:
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.samples.append(
            Sample(
                self.elapsed(),
                rss_kib(self.pid),
                fd_count(self.pid),
                self.stats.total(),
                sum(self.stats.errors.values()),
            )
        )


def metric_values(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels_text, _, value = line[len(name) + 1 :].rpartition("} ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
        found.append((labels, float(value)))
    return found


def verdict(
    soak: Soak, metrics_text: str, log_errors: list[str], args: argparse.Namespace
) -> tuple[bool, list[str]]:
    samples = soak.samples
    warm = [s for s in samples if s.elapsed >= args.warmup]
    baseline = warm[0] if warm else samples[0]
    final = samples[-1]
    growth = (final.rss_kib - baseline.rss_kib) / baseline.rss_kib
    peak = max(s.rss_kib for s in samples)
    fd_values = [s.fds for s in warm] or [s.fds for s in samples]
    statuses = metric_values(metrics_text, "mtls_gateway_requests_total")
    five_xx = sum(v for labels, v in statuses if labels.get("status", "").startswith("5"))
    five_xx -= soak.expected_503  # unregistered callers while Redis was down (fail closed)
    reloads = metric_values(metrics_text, "mtls_gateway_reloads_total")
    failed_reloads = sum(v for labels, v in reloads if labels.get("outcome") == "failed")
    ok_reloads = {labels["component"]: v for labels, v in reloads if labels.get("outcome") == "ok"}
    if soak.setup.redis_port is not None:
        ok_reloads["registry"] = soak.registry_writes  # Redis: writes are live, not file reloads
    stats = soak.stats
    checks = [
        (
            "no unexpected outcome (every request got its expected answer)",
            sum(stats.errors.values()) == 0,
            f"{sum(stats.errors.values())} errors {dict(stats.errors)}",
        ),
        (
            "no 5xx answered by the gateway (but the expected 503s while Redis was down)",
            five_xx == 0,
            f"{five_xx:.0f} other 5xx in /metrics; {soak.expected_503} expected 503s",
        ),
        ("no failed reload", failed_reloads == 0, f"{failed_reloads:.0f} failed"),
        (
            "registry reloads and certificate rotations were picked up",
            ok_reloads.get("registry", 0) >= soak.registry_writes
            and ok_reloads.get("tls:listeners[0]", 0) >= soak.rotations
            and len(stats.server_serials) >= min(soak.rotations + 1, 2),
            f"registry {ok_reloads.get('registry', 0):.0f}/{soak.registry_writes} writes, "
            f"tls {ok_reloads.get('tls:listeners[0]', 0):.0f}/{soak.rotations} rotations, "
            f"{len(stats.server_serials)} server certificates seen",
        ),
        ("no ERROR line in the gateway's log", not log_errors, f"{len(log_errors)} lines"),
        (
            f"RSS growth after warm-up < {args.max_rss_growth:.0%}",
            growth < args.max_rss_growth,
            f"{baseline.rss_kib / 1024:.1f} -> {final.rss_kib / 1024:.1f} MiB ({growth:+.1%}), peak {peak / 1024:.1f} MiB",
        ),
        (
            f"fd count stable (spread <= {args.max_fd_spread})",
            max(fd_values) - min(fd_values) <= args.max_fd_spread
            and final.fds - baseline.fds <= args.max_fd_spread,
            f"{baseline.fds} -> {final.fds}, range {min(fd_values)}..{max(fd_values)}",
        ),
    ]
    lines = [f"- {'PASS' if ok else 'FAIL'}: {name} — {detail}" for name, ok, detail in checks]
    return all(ok for _, ok, _ in checks), lines


async def drive(
    setup: Setup,
    args: argparse.Namespace,
    gateway: subprocess.Popen[bytes],
    redis: RedisProcess | None,
) -> tuple[Soak, str, bool]:
    await wait_ready(f"http://127.0.0.1:{setup.admin}", gateway)
    print(
        f"soak: {args.minutes:g} min, gateway pid {gateway.pid} on :{setup.port}, "
        f"work dir {setup.work.parent}",
        flush=True,
    )
    soak = Soak(setup, args, gateway.pid)
    soak.redis = redis
    await soak.run()
    metrics_text = await soak.metrics()
    return soak, metrics_text, gateway.poll() is None


def report(
    soak: Soak, metrics_text: str, alive: bool, stderr_path: Path, args: argparse.Namespace
) -> tuple[bool, str]:
    log_errors = []
    for line in stderr_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("level") in ("error", "critical"):
                log_errors.append(line)
    ok, lines = verdict(soak, metrics_text, log_errors, args)
    if not alive:
        ok, lines = False, [*lines, "- FAIL: the gateway process died during the run"]
    stats = soak.stats
    minutes = soak.samples[-1].elapsed / 60
    text = [
        f"Soak run: {minutes:.1f} min, 1 worker, "
        f"{'Redis registry (restarted halfway)' if soak.redis is not None else 'YAML registry'}, "
        f"{os.cpu_count()} cores ({sys.platform}, Python {sys.version.split()[0]}).",
        "",
        f"- load: {dict(stats.ok)} succeeded; {dict(stats.refused_as_expected)} refused as expected",
        f"- {stats.total()} requests in all ({stats.total() / (minutes * 60):.0f}/s); "
        f"{soak.registry_writes} registry rewrites and {soak.rotations} server certificate rotations",
        *([f"- {soak.redis_outage}"] if soak.redis_outage else []),
        *lines,
        "",
        "| t (s) | RSS (MiB) | fds | requests | errors |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {s.elapsed:.0f} | {s.rss_kib / 1024:.1f} | {s.fds} | {s.requests} | {s.errors} |"
            for s in soak.samples
        ),
        "",
        f"Verdict: {'PASS' if ok else 'FAIL'}",
    ]
    if stats.error_examples:
        text += ["", "First errors:", *(f"    {e}" for e in stats.error_examples)]
    return ok, "\n".join(text)


def run(args: argparse.Namespace) -> int:
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare(work / "run", redis=args.redis)
    redis: RedisProcess | None = None
    if setup.redis_port is not None:
        redis = RedisProcess(setup.redis_port, setup.work)
        redis.start()
        asyncio.run(seed_redis(setup, extra=False))
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py"), "--port", str(setup.upstream_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stderr_path = work / "gateway.stderr"
    with stderr_path.open("wb") as gateway_err, (work / "gateway.stdout").open("wb") as gateway_out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(setup.config)],
            stdout=gateway_out,
            stderr=gateway_err,
        )
        try:
            soak, metrics_text, alive = asyncio.run(drive(setup, args, gateway, redis))
        finally:
            if redis is not None:
                redis.kill()
            if gateway.poll() is None:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(timeout=30)
            upstream.terminate()
            upstream.wait(timeout=10)
    ok, text = report(soak, metrics_text, alive, stderr_path, args)
    print("\n" + text)
    (work / "soak-report.md").write_text(text + "\n")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the run (default 10)"
    )
    parser.add_argument("--out", help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--redis", action="store_true", help="Redis registry, killed and restarted halfway"
    )
    parser.add_argument("--redis-outage", type=float, default=5.0, help="seconds Redis stays down")
    parser.add_argument("--keepalive-rate", type=float, default=150.0, help="keep-alive requests/s")
    parser.add_argument("--keepalive-workers", type=int, default=4)
    parser.add_argument("--handshake-rate", type=float, default=15.0, help="new connections/s")
    parser.add_argument("--token-rate", type=float, default=3.0, help="token requests/s")
    parser.add_argument("--calls-per-token", type=int, default=5)
    parser.add_argument("--refusal-rate", type=float, default=8.0, help="refused requests/s")
    parser.add_argument(
        "--rotate-every", type=float, default=30.0, help="seconds between rotations"
    )
    parser.add_argument(
        "--rotation-grace",
        type=float,
        default=3.0,
        help="seconds a rotation may take to reach new handshakes (polling: 1 s)",
    )
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds before the RSS baseline"
    )
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--max-fd-spread", type=int, default=8)
    args = parser.parse_args()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
