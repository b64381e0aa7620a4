#!/usr/bin/env python3
"""Side-by-side benchmark: mtls-gateway against NGINX and HAProxy (issue 6).

One run, one machine.  Everything listens on loopback, on ports picked at
start, with the same certificates (from ``mtls-gateway certs init``):

* a fast upstream: NGINX (1 worker) answering ``return 200`` with a fixed small
  body, ``Content-Length`` and keep-alive; its ``/__echo`` is proxied to
  ``bench/upstream.py``, which answers with the raw request head (used to check
  which identity headers each proxy really forwarded);
* NGINX front (1 worker): ``ssl_verify_client on``, subject DN → client id map,
  identity headers, caller-sent copies cleared, keep-alive upstream pool;
* HAProxy (``nbthread 1``): ``verify required``, the same headers;
* mtls-gateway (``serve --config``, 1 worker): a YAML registry with the client
  registered by ``X509CertificateName``, one ``auth: client`` route.

Each system is first checked with one curl through it (the upstream must see
the verified identity headers and none of the caller's spoofed copies), then
driven in turn, over several alternating rounds, by ``ab``: keep-alive
(``-k -c 32``) and one full mTLS handshake per request (no ``-k``).  Medians
are reported with p50/p99 latency, failures, non-2xx answers, keep-alive
reuse and the proxy's CPU time per request.  Then: RSS with 1,000 and 10,000
idle mTLS keep-alive connections (fresh processes), the gateway with
``--workers 2``, and optionally a py-spy profile of the gateway under the
keep-alive load.

The HTTP/2 row (issue 17, ``bench/compare_h2.py``): ``h2load`` over TLS with
ALPN h2, ``-c 1 -m 32`` (32 streams in flight) by default, against a fresh
NGINX (``listen ... ssl http2``) and a fresh gateway (``http2: true``), both
proxying to the same upstream, in alternating rounds: req/s, latency, CPU per
request, the ratio gateway/nginx and the target (h2 req/s >= 0.5x NGINX).
**Both run without a client certificate**, because Debian's h2load cannot
present one: NGINX with ``ssl_verify_client optional``, the gateway with
``client_certs: optional`` and an ``auth: none`` route. That row measures
HTTP/2 and proxying, not the mTLS handshake or the registry lookup.

    python3 bench/compare.py                 # full run (~10 min on 2 cores)
    python3 bench/compare.py --quick         # smoke run (~1 min)
    python3 bench/compare.py --only gateway --profile
    python3 bench/compare.py --modes h2      # the HTTP/2 row alone (NGINX and gateway)

Needs ``nginx``, ``haproxy``, ``ab``, ``curl`` and, for the h2 row, ``h2load``
(Debian: ``apt-get install -y nginx-light haproxy apache2-utils curl
nghttp2-client``) and, for ``--profile``, ``py-spy`` (``pip install py-spy``).  Every process it starts is killed on exit.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from compare_h2 import (
    H2_SYSTEMS,
    NGINX_H2,
    h2_phase,
    h2_target,
    print_h2,
)
from gateway_conf import GATEWAY, GATEWAY_H2  # bench/ is not a package: from its directory
from nginx_conf import NGINX_BACKEND, NGINX_HEAD, NGINX_IDENTITY_HEADERS, NGINX_PROXY, NGINX_TLS

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
# compiled: the gateway again, from an install built with COMPILE_MTLS_GATEWAY=1
# (setup.py: the data plane compiled by mypyc), named by --compiled-command.
SYSTEMS = ("nginx", "haproxy", "gateway", "compiled", "pytls", "floor")
PROXIES = ("nginx", "haproxy", "gateway", "compiled")
MODES = ("http1", "h2")  # http1: every HTTP/1.1 phase (issue 6); h2: the HTTP/2 row (issue 17)
BODY = '{"ok":true}\n'
CLIENT_ID = "bench.client"
CLIENT_DN = "CN=client, OU=production, O=company"  # what `certs init` issues
CLIENT_DN_RFC2253 = "CN=client,OU=production,O=company"  # NGINX's / HAProxy's form
SPOOFED_HEADERS = (
    ("X-Client-Id", "spoofed-id"),
    ("X-Client-Cert-Subject", "spoofed-subject"),
    ("X-Client-Cert-Thumbprint", "spoofed-thumbprint"),
    ("X_Client_Cert_Subject", "spoofed-underscore"),
    ("X-Forwarded-Client-Cert", "spoofed-xfcc"),
)
KEEPALIVE_TIMEOUT = 600  # seconds, the same on every system (idle connections must survive)
# Issue 12's acceptance figures ("How it is shown").
TARGETS = {
    "keepalive_ratio": 0.5,
    "handshake_ratio": 1.0,
    "p99_slack_ms": 1.0,
    "kib_per_idle_connection": 30.0,
    "rss_10k_mb": 300.0,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- processes


class Processes:
    """Every process this script starts, each in its own session (process group)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        out = (self.logdir / f"{name}.log").open("ab")
        self._files.append(out)
        kwargs.setdefault("stdout", out)
        kwargs.setdefault("stderr", out)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        _kill_group(proc, grace)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, grace=5.0)
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    # The group id is the child's pid (start_new_session): only our processes.
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Workers (NGINX, gateway --workers) may outlive their parent: sweep the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None and int(stat[2]) == pgid:
            pids.append(int(entry))
    return pids


def _read_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt
    # cminflt majflt cmajflt utime stime ...
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None:
            total += int(stat[11]) + int(stat[12])
    return total / ticks


def machine_busy_seconds() -> tuple[float, float]:
    """(user+nice+system, total) CPU seconds of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (fields[0] + fields[1] + fields[2]) / ticks, sum(fields[:8]) / ticks


def children(pid: int) -> list[int]:
    return [p for p in group_pids(pid) if (_read_stat(p) or ["", "0"])[1] == str(pid)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1 << 17, hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------- setup


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    server_combined: Path
    client_cert: Path
    client_key: Path
    client_combined: Path
    signing_key: Path
    client_thumbprint: str


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("mtls-gateway")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def prepare_pki(work: Path) -> Pki:
    pki_dir = work / "pki"
    run([*gateway_command(), "certs", "init", str(pki_dir)], timeout=60)
    key = work / "keys" / "signing.pem"
    key.parent.mkdir(mode=0o700)
    run([*gateway_command(), "keys", "generate", str(key)], timeout=60)
    server_combined = work / "server-combined.pem"  # HAProxy wants cert + key
    server_combined.write_text(
        (pki_dir / "server.pem").read_text() + (pki_dir / "server.key").read_text()
    )
    client_combined = work / "client-combined.pem"  # ab -E wants cert + key
    client_combined.write_text(
        (pki_dir / "client.pem").read_text() + (pki_dir / "client.key").read_text()
    )
    der = ssl.PEM_cert_to_DER_cert((pki_dir / "client.pem").read_text())
    return Pki(
        ca=pki_dir / "ca.pem",
        server_cert=pki_dir / "server.pem",
        server_key=pki_dir / "server.key",
        server_combined=server_combined,
        client_cert=pki_dir / "client.pem",
        client_key=pki_dir / "client.key",
        client_combined=client_combined,
        signing_key=key,
        client_thumbprint=hashlib.sha1(der).hexdigest(),  # noqa: S324 - a certificate thumbprint
    )


def run(argv: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return result


NGINX_UPSTREAM = (
    NGINX_HEAD
    + """\
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type text/plain;
            return 200 '{body}';
        }}
        location /__echo {{
            proxy_pass http://127.0.0.1:{echo_port};
        }}
    }}
}}
"""
)

NGINX_FRONT = (
    NGINX_HEAD
    + """\
"""
    + NGINX_BACKEND
    + """\
    server {{
        listen 127.0.0.1:{port} ssl backlog=1024;
"""
    + NGINX_TLS
    + """\
        ssl_verify_client on;
        if ($client_id = "") {{ return 403; }}
        location / {{
"""
    + NGINX_PROXY
    + NGINX_IDENTITY_HEADERS
)

HAPROXY = """\
global
    nbthread 1
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client {ka}s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive {ka}s
frontend fe
    bind 127.0.0.1:{port} ssl crt {combined} ca-file {ca} verify required
    # Caller-sent identity headers, with "_" read as "-".
    http-request del-header ^x[-_]client[-_] -m reg
    http-request del-header ^x[-_]forwarded[-_] -m reg
    http-request del-header ^client[-_]cert -m reg
    # The registry: verified subject DN -> client id (unknown subject: 403).
    http-request set-var(txn.client_id) ssl_c_s_dn(,0,rfc2253),map({map})
    http-request deny deny_status 403 unless {{ var(txn.client_id) -m found }}
    http-request set-header X-Client-Id %[var(txn.client_id)]
    http-request set-header X-Client-Cert-Subject %[ssl_c_s_dn(,0,rfc2253)]
    http-request set-header X-Client-Cert-Thumbprint %[ssl_c_sha1,hex,lower]
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be
backend be
    server upstream 127.0.0.1:{upstream_port}
"""


REGISTRY = """\
clients:
  - client_id: {client_id}
    allowed_scopes: [api1]
    secrets:
      - type: X509CertificateName
        value: "{dn}"
"""


def example_has_access_log_key() -> bool:
    """Whether config/gateway.example.yaml documents logging.access_log (checked at run time)."""
    try:
        import yaml

        example = yaml.safe_load((PROJECT / "config" / "gateway.example.yaml").read_text())
        return "access_log" in (example.get("logging") or {})
    except Exception:
        return False


@dataclass
class System:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    workers: int = 1

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        if self.name == "nginx" or (self.name == "gateway" and self.workers > 1):
            return children(self.proc.pid)
        return [self.proc.pid]

    def all_pids(self) -> list[int]:
        assert self.proc is not None
        return group_pids(self.proc.pid)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, out: Path) -> None:
        self.args = args
        self.work = work
        self.out = out
        self.procs = Processes(work)
        self.nofile = raise_nofile()
        self.pki = prepare_pki(work)
        self.upstream_port = free_port()
        self.echo_port = free_port()
        self.access_log_key = example_has_access_log_key()
        self.upstream_pids: list[int] = []
        self.gateway_sources: list[str] = []
        # A variant to measure (e.g. bench/variants.py), else the installed gateway.
        # Paths in it are taken from the caller's directory (serve runs in the work dir);
        # absolute, not resolved: a venv's python is a symlink to the base interpreter.
        self.serve_command = (
            [str(Path(t).absolute()) if Path(t).exists() else t for t in shlex.split(cmd)]
            if (cmd := args.gateway_command)
            else gateway_command()
        )

    def _serve_command(self, name: str) -> list[str]:
        if name != "compiled":
            return self.serve_command
        if not self.args.compiled_command:
            raise SystemExit("--only compiled needs --compiled-command (see bench/README.md)")
        return shlex.split(self.args.compiled_command)

    # -- upstream ---------------------------------------------------------

    def start_upstream(self) -> None:
        echo = self.procs.start(
            "echo-upstream",
            [sys.executable, str(HERE / "upstream.py"), "--port", str(self.echo_port)],
        )
        wait_port(self.echo_port, echo)
        if self.args.upstream == "python":
            fast = self.procs.start(
                "upstream",
                [sys.executable, str(HERE / "upstream.py"), "--port", str(self.upstream_port)],
            )
        else:
            fast = self.start_nginx(
                "upstream",
                NGINX_UPSTREAM.format(
                    dir="{dir}",
                    nofile=self.nofile,
                    conns=self.nofile - 100,
                    ka=KEEPALIVE_TIMEOUT,
                    port=self.upstream_port,
                    body=BODY.replace("\n", "\\n"),
                    echo_port=self.echo_port,
                ),
            )
        wait_port(self.upstream_port, fast)
        self.upstream_pids = group_pids(fast.pid)

    def start_nginx(self, name: str, template: str) -> subprocess.Popen[bytes]:
        prefix = self.work / name
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(template.replace("{dir}", str(prefix)))
        run(["nginx", "-t", "-q", "-p", f"{prefix}/", "-c", str(conf)], timeout=30)
        return self.procs.start(
            name, ["nginx", "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"]
        )

    # -- systems under test -----------------------------------------------

    def start(self, name: str, workers: int = 1, tag: str = "", h2: bool = False) -> System:
        """One system on a fresh port; h2: the HTTP/2 row's set-up (bench/compare_h2.py)."""
        if h2 and name not in H2_SYSTEMS:
            raise ValueError(f"no HTTP/2 set-up for {name}")
        port = free_port()
        proc_name = f"{name}{tag}"
        p = self.pki
        if name == "nginx":
            proc = self.start_nginx(
                proc_name,
                (NGINX_H2 if h2 else NGINX_FRONT).format(
                    dir="{dir}",
                    nofile=self.nofile,
                    conns=self.nofile - 100,
                    ka=KEEPALIVE_TIMEOUT,
                    dn=CLIENT_DN_RFC2253,
                    client_id=CLIENT_ID,
                    upstream_port=self.upstream_port,
                    port=port,
                    cert=p.server_cert,
                    key=p.server_key,
                    ca=p.ca,
                ),
            )
        elif name == "haproxy":
            mapfile = self.work / "clients.map"
            mapfile.write_text(f"{CLIENT_DN_RFC2253} {CLIENT_ID}\n")
            conf = self.work / f"{proc_name}.cfg"
            conf.write_text(
                HAPROXY.format(
                    ka=KEEPALIVE_TIMEOUT,
                    port=port,
                    combined=p.server_combined,
                    ca=p.ca,
                    map=mapfile,
                    upstream_port=self.upstream_port,
                )
            )
            run(["haproxy", "-c", "-q", "-f", str(conf)], timeout=30)
            proc = self.procs.start(proc_name, ["haproxy", "-db", "-f", str(conf)])
        elif name in ("pytls", "floor"):
            # The two references, each a Python script of bench/ on the same
            # port and certificates: pytls, a bare uvloop + ssl mTLS server
            # answering itself (not a proxy); floor, the gateway's TLS layer
            # under a bare relay to the upstream (bench/floor.py).
            if name == "pytls":
                script = ["upstream.py", "--tls", str(p.ca.parent)]
                script += ["--tickets", str(self.args.reference_tickets)]
            else:
                script = ["floor.py", "--pki", str(p.ca.parent)]
                script += ["--upstream-port", str(self.upstream_port)]
            proc = self.procs.start(
                proc_name, [sys.executable, str(HERE / script[0]), "--port", str(port), *script[1:]]
            )
        else:
            registry = self.work / "clients.yaml"
            registry.write_text(REGISTRY.format(client_id=CLIENT_ID, dn=CLIENT_DN))
            conf = self.work / f"{proc_name}.yaml"
            admin_port = free_port()
            conf.write_text(
                (GATEWAY_H2 if h2 else GATEWAY).format(
                    port=port,
                    admin_port=admin_port,
                    cert=p.server_cert,
                    key=p.server_key,
                    ca=p.ca,
                    registry=registry,
                    signing_key=p.signing_key,
                    upstream_port=self.upstream_port,
                    ka=KEEPALIVE_TIMEOUT,
                    access_log="  access_log: false\n" if self.access_log_key else "",
                )
            )
            proc = self.procs.start(
                proc_name,
                [
                    *self._serve_command(name),
                    "serve",
                    "--config",
                    str(conf),
                    "--workers",
                    str(workers),
                ],
                cwd=str(self.work),
            )
            wait_port(port, proc)
            _wait_ready(admin_port, proc)
        wait_port(port, proc)
        system = System(name, port, proc, workers)
        if name == "gateway":
            # The tree may change under a long run (others at work): record what ran.
            self.gateway_sources.append(_source_digest())
        if name == "gateway" and workers > 1:
            deadline = time.monotonic() + 20
            while len(system.worker_pids()) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
        return system

    def stop(self, system: System) -> None:
        for name, proc in list(self.procs.procs.items()):
            if proc is system.proc:
                self.procs.stop(name)

    # -- checks -------------------------------------------------------------

    def wait_quiet(self) -> float:
        """Wait (bounded) until other processes use little CPU; return what they used (cores)."""
        deadline = time.monotonic() + self.args.wait_quiet
        warned = False
        while True:
            busy0, total0 = machine_busy_seconds()
            time.sleep(1.0)
            busy1, total1 = machine_busy_seconds()
            cores = (busy1 - busy0) / max(total1 - total0, 1e-9) * (os.cpu_count() or 1)
            if cores > self.args.quiet_cores and time.monotonic() > deadline:
                log(f"machine: {cores:.2f} cores busy with other work; measuring anyway")
                return round(cores, 2)
            if cores <= self.args.quiet_cores:
                if warned:
                    log(f"machine: quiet again ({cores:.2f} cores); measuring")
                return round(cores, 2)
            if not warned:
                log(f"machine: {cores:.2f} cores busy with other work; waiting to measure")
                warned = True
            time.sleep(2.0)

    def warm_request(self, system: System) -> str:
        p = self.pki
        argv = ["curl", "-sS", "--max-time", "10", "--cacert", str(p.ca), "--cert"]
        argv += [str(p.client_cert), "--key", str(p.client_key), "-o", "/dev/null"]
        argv += ["-w", "%{http_code}", f"https://127.0.0.1:{system.port}/"]
        return run(argv, timeout=20, check=False).stdout.strip()

    def verify_identity(self, system: System) -> dict[str, Any]:
        """One curl through the system: the upstream must see the verified identity only."""
        p = self.pki
        body = self.work / f"echo-{system.name}.txt"
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(p.ca),
            "--cert",
            str(p.client_cert),
            "--key",
            str(p.client_key),
            "-o",
            str(body),
            "-w",
            "%{http_code}",
        ]
        for name, value in SPOOFED_HEADERS:
            argv += ["-H", f"{name}: {value}"]
        result = run([*argv, f"https://127.0.0.1:{system.port}/__echo"], timeout=20, check=False)
        status = result.stdout.strip()
        seen: list[tuple[str, str]] = []
        if body.exists():
            raw = body.read_bytes().decode(errors="replace")
            (self.out / f"echo-{system.name}.txt").write_text(raw)
            for line in raw.split("\r\n")[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    seen.append((name.strip(), value.strip()))
        lower = [(n.lower(), v) for n, v in seen]
        subjects = [v for n, v in lower if n == "x-client-cert-subject"]
        thumbprints = [v for n, v in lower if n == "x-client-cert-thumbprint"]
        client_ids = [v for n, v in lower if n == "x-client-id"]
        leaked = sorted({n for n, v in seen if "spoofed" in v})
        no_cert = run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                str(p.ca),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"https://127.0.0.1:{system.port}/",
            ],
            timeout=20,
            check=False,
        )
        no_cert_outcome = (
            f"HTTP {no_cert.stdout.strip()}"
            if no_cert.returncode == 0
            else f"TLS refused (curl exit {no_cert.returncode})"
        )
        checks = {
            "status_200": status == "200",
            "subject_once": len(subjects) == 1 and "CN=client" in subjects[0],
            "thumbprint": thumbprints == [p.client_thumbprint],
            "client_id": client_ids == [CLIENT_ID],
            "no_spoofed_header": not leaked,
            "no_cert_refused": no_cert.returncode != 0 or no_cert.stdout.strip() != "200",
        }
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "status": status,
            "subject": subjects,
            "thumbprint": thumbprints,
            "client_id": client_ids,
            "leaked": leaked,
            "no_cert": no_cert_outcome,
            "identity_headers_seen": [
                f"{n}: {v}"
                for n, v in seen
                if n.lower().startswith(("x-client", "x-forwarded", "client-cert"))
            ],
        }

    # -- load -----------------------------------------------------------------

    def ab(
        self,
        system: System,
        *,
        keepalive: bool,
        n: int,
        label: str,
        timelimit: int = 0,
        quiet: bool = True,
    ) -> AbResult:
        """One ab run; quiet=False when a tracer we started is running (it would look busy)."""
        csv = self.work / f"ab-{label}.csv"
        argv = ["ab", "-q", "-r", "-s", "10", "-c", str(self.args.concurrency), "-n", str(n)]
        argv += ["-E", str(self.pki.client_combined), "-e", str(csv)]
        if keepalive:
            argv.append("-k")
        if timelimit:
            argv[1:1] = ["-t", str(timelimit)]  # before -n: "-t" alone would cap -n at 50000
        argv.append(f"https://127.0.0.1:{system.port}/")
        load = self.run_load(system, argv, quiet=quiet)
        (self.out / "ab").mkdir(exist_ok=True)
        (self.out / "ab" / f"{label}.txt").write_text(" ".join(argv) + "\n\n" + load.output)
        result = parse_ab(load.output, csv if csv.exists() else None)
        result.exit_code = load.exit_code
        result.wall_seconds = load.wall_seconds
        result.busy_before_cores = load.busy_before_cores
        result.other_cpu_cores = load.other_cpu_cores
        if result.complete:
            result.proxy_cpu_us = load.per_request_us(load.proxy_cpu, result.complete)
            result.upstream_cpu_us = load.per_request_us(load.upstream_cpu, result.complete)
            result.ab_cpu_us = load.per_request_us(load.client_cpu, result.complete)
        return result

    def run_load(self, system: System, argv: list[str], quiet: bool = True) -> LoadRun:
        """Run one load client (ab, h2load) to its end; CPU of the system, upstream, client.

        quiet=False when a tracer we started is running (it would look busy).
        """
        busy_before = self.wait_quiet() if quiet else None
        pids = system.all_pids()
        machine0 = machine_busy_seconds()[0]
        cpu0, up0 = cpu_seconds(pids), cpu_seconds(self.upstream_pids)
        client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.args.ab_timeout, check=False
            )
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            # text=True: what ran before the timeout is str, or bytes on some Pythons.
            partial = exc.stdout or ""
            if isinstance(partial, bytes):
                partial = partial.decode(errors="replace")
            output = f"{argv[0]} timed out after {self.args.ab_timeout}s\n{partial}"
            code = -1
        wall = time.monotonic() - started
        client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1, up1 = cpu_seconds(pids), cpu_seconds(self.upstream_pids)
        machine1 = machine_busy_seconds()[0]
        client_cpu = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
        ours = (cpu1 - cpu0) + (up1 - up0) + client_cpu
        return LoadRun(
            output=output,
            exit_code=code,
            wall_seconds=round(wall, 2),
            busy_before_cores=busy_before,
            # CPU used by anything else on the machine meanwhile (other users, other jobs).
            other_cpu_cores=round(max(0.0, (machine1 - machine0) - ours) / wall, 2),
            proxy_cpu=cpu1 - cpu0,
            upstream_cpu=up1 - up0,
            client_cpu=client_cpu,
        )


@dataclass
class LoadRun:
    """One load client's run: its output and the CPU seconds each side used meanwhile."""

    output: str
    exit_code: int
    wall_seconds: float
    busy_before_cores: float | None
    other_cpu_cores: float
    proxy_cpu: float
    upstream_cpu: float
    client_cpu: float

    @staticmethod
    def per_request_us(seconds: float, requests: int) -> float:
        return round(seconds / requests * 1e6, 1)


def _wait_ready(admin_port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{admin_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError("gateway not ready")


# ----------------------------------------------------------------- ab parsing


@dataclass
class AbResult:
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    complete: int = 0
    failed: int = 0
    failed_detail: str = ""
    non2xx: int = 0
    keepalive_requests: int = 0
    document_length: int | None = None
    tls: str = ""
    exit_code: int = 0
    wall_seconds: float = 0.0
    proxy_cpu_us: float | None = None
    upstream_cpu_us: float | None = None
    ab_cpu_us: float | None = None
    busy_before_cores: float | None = None
    other_cpu_cores: float | None = None
    error: str = ""

    @property
    def all_ok(self) -> bool:
        return (
            self.exit_code == 0
            and self.complete > 0
            and self.failed == 0
            and self.non2xx == 0
            and self.document_length == len(BODY)
        )


def parse_ab(output: str, csv: Path | None) -> AbResult:
    r = AbResult()

    def grab(pattern: str) -> str | None:
        m = re.search(pattern, output, re.MULTILINE)
        return m.group(1) if m else None

    r.rps = float(grab(r"^Requests per second:\s+([\d.]+)") or 0)
    r.complete = int(grab(r"^Complete requests:\s+(\d+)") or 0)
    r.failed = int(grab(r"^Failed requests:\s+(\d+)") or 0)
    r.failed_detail = (grab(r"^\s+\((Connect: .*)\)") or "").strip()
    r.non2xx = int(grab(r"^Non-2xx responses:\s+(\d+)") or 0)
    r.keepalive_requests = int(grab(r"^Keep-Alive requests:\s+(\d+)") or 0)
    length = grab(r"^Document Length:\s+(\d+)")
    r.document_length = int(length) if length is not None else None
    r.tls = grab(r"^SSL/TLS Protocol:\s+(.*)$") or ""
    mean = grab(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)")
    r.mean_ms = float(mean) if mean else None
    if csv is not None:
        table = {}
        for line in csv.read_text().splitlines()[1:]:
            pct, _, ms = line.partition(",")
            with contextlib.suppress(ValueError):
                table[int(pct)] = float(ms)
        r.p50_ms, r.p99_ms, r.max_ms = table.get(50), table.get(99), table.get(100)
    if r.complete == 0:
        r.error = " | ".join(line for line in output.splitlines()[-3:] if line.strip())
    return r


# ----------------------------------------------------------------- phases


def summarise(results: list[AbResult]) -> dict[str, Any]:
    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    return {
        "rounds": len(results),
        "rps": med([r.rps for r in results]),
        "rps_each": [r.rps for r in results],
        "p50_ms": med([r.p50_ms for r in results]),
        "p99_ms": med([r.p99_ms for r in results]),
        "p99_each": [r.p99_ms for r in results],
        "max_ms": med([r.max_ms for r in results]),
        "complete": sum(r.complete for r in results),
        "failed": sum(r.failed for r in results),
        "non2xx": sum(r.non2xx for r in results),
        "keepalive_requests": sum(r.keepalive_requests for r in results),
        "document_length": sorted({r.document_length for r in results if r.document_length}),
        "all_ok": all(r.all_ok for r in results),
        "proxy_cpu_us": med([r.proxy_cpu_us for r in results]),
        "upstream_cpu_us": med([r.upstream_cpu_us for r in results]),
        "ab_cpu_us": med([r.ab_cpu_us for r in results]),
        "other_cpu_cores_max": max((r.other_cpu_cores or 0.0 for r in results), default=0.0),
        "tls": sorted({r.tls for r in results if r.tls}),
        "errors": sorted({r.error for r in results if r.error}),
    }


def throughput_phase(bench: Bench, systems: dict[str, System]) -> dict[str, Any]:
    args = bench.args
    raw: dict[str, dict[str, list[AbResult]]] = defaultdict(lambda: defaultdict(list))
    names = list(systems)
    for name in names:  # warm-up, not recorded
        log(f"warm-up {name}")
        bench.ab(
            systems[name], keepalive=True, n=max(args.requests // 20, 500), label=f"warm-{name}-ka"
        )
        bench.ab(
            systems[name],
            keepalive=False,
            n=max(args.handshakes // 20, 50),
            label=f"warm-{name}-hs",
        )
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            for mode, keepalive, n in (
                ("keepalive", True, args.requests),
                ("handshake", False, args.handshakes),
            ):
                res = bench.ab(
                    systems[name], keepalive=keepalive, n=n, label=f"r{rnd}-{name}-{mode}"
                )
                raw[name][mode].append(res)
                log(
                    f"round {rnd + 1}/{args.rounds} {name:8} {mode:9} {res.rps:9.1f} req/s"
                    f"  p50 {res.p50_ms} p99 {res.p99_ms} ms  failed {res.failed}"
                    f"  non-2xx {res.non2xx}  ka {res.keepalive_requests}"
                    f"  cpu {res.proxy_cpu_us} us/req  other load {res.other_cpu_cores} cores"
                    f"{'' if res.all_ok else '  NOT ALL OK'}"
                )
    return {
        name: {mode: summarise(results) for mode, results in modes.items()}
        | {"raw": {mode: [asdict(r) for r in results] for mode, results in modes.items()}}
        for name, modes in raw.items()
    }


def scaling_phase(bench: Bench, single: dict[str, Any] | None) -> dict[str, Any]:
    args = bench.args
    system = bench.start("gateway", workers=2, tag="-w2")
    try:
        log(f"gateway --workers 2: pids {system.worker_pids()}")
        bench.ab(system, keepalive=True, n=max(args.requests // 20, 500), label="warm-gw2-ka")
        ka, hs = [], []
        for rnd in range(args.rounds):
            ka.append(
                bench.ab(system, keepalive=True, n=args.requests, label=f"r{rnd}-gw2-keepalive")
            )
            hs.append(
                bench.ab(system, keepalive=False, n=args.handshakes, label=f"r{rnd}-gw2-handshake")
            )
            log(
                f"round {rnd + 1} gateway -w2: keepalive {ka[-1].rps} req/s, handshake {hs[-1].rps}/s"
            )
    finally:
        bench.stop(system)
    result: dict[str, Any] = {"keepalive": summarise(ka), "handshake": summarise(hs)}
    if single:
        for mode in ("keepalive", "handshake"):
            one = single.get(mode, {}).get("rps")
            two = result[mode]["rps"]
            result[mode]["vs_1_worker"] = round(two / one, 3) if one and two else None
    return result


def memory_phase(bench: Bench, names: list[str]) -> dict[str, Any]:
    args = bench.args
    results: dict[str, Any] = {}
    for name in names:
        for count in args.idle:
            system = bench.start(name, tag=f"-mem{count}")
            holder: subprocess.Popen[bytes] | None = None
            entry: dict[str, Any] = {"requested": count}
            try:
                # One warm request so that the baseline includes the first request's imports.
                entry["warm_status"] = bench.warm_request(system)
                time.sleep(1.0)
                pids = system.worker_pids()
                entry["worker_pids"] = pids
                entry["baseline_rss_mb"] = round(sum(rss_kib(p) for p in pids) / 1024, 1)
                log(f"memory {name}: opening {count} idle mTLS connections")
                holder = bench.procs.start(
                    f"hold-{name}-{count}",
                    [
                        sys.executable,
                        str(HERE / "hold.py"),
                        "--port",
                        str(system.port),
                        "--count",
                        str(count),
                        "--cert",
                        str(bench.pki.client_cert),
                        "--key",
                        str(bench.pki.client_key),
                        "--ca",
                        str(bench.pki.ca),
                        "--open-deadline",
                        str(args.open_deadline),
                        "--hold-max",
                        str(args.open_deadline + 120),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                opened = _read_json_line(holder, args.open_deadline + 60)
                entry.update(opened)
                time.sleep(2.0)  # let the server settle
                entry["rss_mb"] = round(sum(rss_kib(p) for p in pids) / 1024, 1)
                entry["alive"] = _holder_alive(holder)
                base, rss, alive = entry["baseline_rss_mb"], entry["rss_mb"], entry["alive"]
                if alive:
                    entry["kib_per_connection"] = round((rss - base) * 1024 / alive, 1)
                log(
                    f"memory {name}: {entry.get('opened')} opened, {alive} alive, "
                    f"RSS {base} -> {rss} MB"
                )
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                log(f"memory {name} {count}: {entry['error']}")
            finally:
                if holder is not None:
                    with contextlib.suppress(OSError, ValueError):
                        assert holder.stdin is not None
                        holder.stdin.write(b"exit\n")
                        holder.stdin.flush()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        holder.wait(timeout=20)
                    bench.procs.stop(f"hold-{name}-{count}")
                bench.stop(system)
            results.setdefault(name, {})[str(count)] = entry
    return results


def _read_json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise RuntimeError(f"no answer from {proc.args!r} within {timeout}s")
    parsed: dict[str, Any] = json.loads(box[0])
    return parsed


def _holder_alive(holder: subprocess.Popen[bytes]) -> int:
    assert holder.stdin is not None
    holder.stdin.write(b"check\n")
    holder.stdin.flush()
    return int(_read_json_line(holder, 30)["alive"])


# ----------------------------------------------------------------- profiling


GROUPS = (
    ("logging", ("logging/", "gateway/ops/logs.py")),
    ("our code: auth/headers/routing/proxy", ("gateway/",)),
    (
        "aiohttp client (upstream side)",
        (
            "aiohttp/client",
            "aiohttp/connector.py",
            "aiohttp/tracing.py",
            "aiohttp/cookiejar.py",
            "yarl/",
        ),
    ),
    ("TLS (ssl module, OpenSSL)", ("ssl.py", "sslproto", "libssl", "libcrypto", "_ssl_")),
    (
        "HTTP parsing/serialising (aiohttp, multidict)",
        (
            "aiohttp/http_parser",
            "aiohttp/_http_parser",
            "aiohttp/http_writer",
            "aiohttp/_http_writer",
            "aiohttp/streams.py",
            "aiohttp/base_protocol.py",
            "aiohttp/client_proto.py",
            "multidict/",
        ),
    ),
    ("aiohttp server (handler, request, response, router)", ("aiohttp/web", "aiohttp/helpers.py")),
    ("event loop (asyncio, uvloop, timers)", ("asyncio/", "uvloop", ".pyx", "libuv", "getpid")),
)
# Native leaves (py-spy --native) that decide a sample's group whatever called them.
NATIVE_GROUPS = (
    ("kernel: socket write (loopback TCP)", ("write", "writev", "sendmsg", "send", "__send")),
    ("kernel: socket read", ("read", "readv", "recvmsg", "recv", "__recv")),
    ("garbage collector", ("gc_collect_main", "gc_collect_with_callback")),
)
IDLE_MARKERS = ("epoll_wait", "epoll_pwait", "_queue_SimpleQueue_get", "PyThread_acquire_lock")


# Python-only profiles charge C work to the Python frame that called it: these
# leaves are really transport work, not the module they live in.
PYTHON_LEAVES = (
    ("StreamWriter._write (", "transport.write: TLS encrypt + send syscall"),
    ("Runner.run (", "uvloop C: recv syscall, TLS decrypt, callback dispatch"),
)


def classify(stack: list[str]) -> str:
    """Group of one sample: its leaf if that is decisive, else the nearest known frame."""
    for needle, group in PYTHON_LEAVES:
        if stack[-1].startswith(needle):
            return group
    for frame in reversed(stack):
        name = frame.split(" (", 1)[0]
        for group, names in NATIVE_GROUPS:
            if name in names:
                return group
        if name.startswith(("SSL_", "EVP_", "ossl_", "ECDSA_", "EC_", "X509", "ASN1")):
            return "TLS (ssl module, OpenSSL)"
        if name == "getpid":  # asyncio.get_running_loop() checks the pid each call
            return "event loop (asyncio, uvloop, timers)"
        if name.startswith("0x") or "libpython" in frame or ".c)" in frame or ".h)" in frame:
            continue  # unresolved or interpreter internals: charge the caller
        for group, needles in GROUPS:
            if any(n in frame for n in needles):
                return group
        if ".py)" in frame:
            return "other Python"
    return "other"


def profile_phase(bench: Bench, out: Path) -> dict[str, Any]:
    """py-spy on a fresh gateway under ab load: keep-alive, then one handshake per request."""
    if shutil.which("py-spy") is None:
        return {"error": "py-spy not found: pip install py-spy"}
    args = bench.args
    system = bench.start("gateway", tag="-prof")
    results: dict[str, Any] = {}
    try:
        pid = system.worker_pids()[0]
        bench.ab(system, keepalive=True, n=max(args.requests // 20, 500), label="warm-prof")
        for keepalive, fmt, fname, extra in (
            # --nonblocking: sample without pausing the gateway (less overhead);
            # --native needs the pause, and shows C frames (OpenSSL, uvloop, syscalls).
            (True, "raw", "profile.txt", ["--nonblocking"]),
            (True, "flamegraph", "profile.svg", ["--nonblocking"]),
            (True, "raw", "profile-native.txt", ["--native"]),
            (False, "raw", "profile-handshake.txt", ["--nonblocking"]),
            (False, "raw", "profile-handshake-native.txt", ["--native"]),
        ):
            target = out / fname
            bench.wait_quiet()
            spy = bench.procs.start(
                f"py-spy-{fname}",
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "250",
                    "--duration",
                    str(args.profile_seconds),
                    "--format",
                    fmt,
                    "--output",
                    str(target),
                    *extra,
                ],
            )
            time.sleep(1.0)
            # ab -t stops the load about when the recording ends.
            load = bench.ab(
                system,
                keepalive=keepalive,
                n=10_000_000,
                label=f"prof-{fname}",
                timelimit=args.profile_seconds + 1,
                quiet=False,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=args.profile_seconds + 60)
            bench.procs.stop(f"py-spy-{fname}")
            results[fname] = {
                "mode": "keepalive" if keepalive else "handshake",
                "load_rps_while_sampled": load.rps,
                "exists": target.exists(),
            }
            if fmt == "raw" and target.exists():
                results[fname]["summary"] = summarise_profile(target)
    finally:
        bench.stop(system)
    return results


def syscalls_phase(bench: Bench, systems: dict[str, System]) -> dict[str, Any]:
    """strace -c on each system's worker(s) during a keep-alive ab run: syscalls per request."""
    if shutil.which("strace") is None:
        return {"error": "strace not found: apt-get install -y strace"}
    results: dict[str, Any] = {}
    n = bench.args.syscall_requests
    for name, system in systems.items():
        tids = [tid for pid in system.worker_pids() for tid in os.listdir(f"/proc/{pid}/task")]
        summary = bench.work / f"strace-{name}.txt"
        argv = ["strace", "-c", "-f", "-o", str(summary)]
        for tid in tids:
            argv += ["-p", tid]
        bench.wait_quiet()
        tracer = bench.procs.start(f"strace-{name}", argv)
        time.sleep(1.0)
        load = bench.ab(system, keepalive=True, n=n, label=f"strace-{name}", quiet=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(tracer.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            tracer.wait(timeout=20)
        bench.procs.stop(f"strace-{name}")
        calls: dict[str, float] = {}
        if summary.exists():
            (bench.out / summary.name).write_text(summary.read_text())
            for line in summary.read_text().splitlines():
                cols = line.split()
                # % time, seconds, usecs/call, calls, [errors], syscall
                if (
                    len(cols) >= 5
                    and cols[-1].isidentifier()
                    and cols[3].isdigit()
                    and cols[-1] != "total"
                    and load.complete
                ):
                    calls[cols[-1]] = round(int(cols[3]) / load.complete, 2)
        results[name] = {
            "requests": load.complete,
            "per_request": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
            "total_per_request": round(sum(calls.values()), 2),
        }
        log(f"syscalls {name}: {results[name]['total_per_request']}/req {calls}")
    return results


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and total time per frame, and self time per group, from py-spy's raw output.

    Samples of a thread waiting (epoll, an idle executor thread) are counted
    apart as idle; percentages are of the busy samples.
    """
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    samples = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack_s, _, count_s = line.rpartition(" ")
        if not count_s.isdigit() or not stack_s:
            continue
        count = int(count_s)
        frames = [_short(f) for f in stack_s.split(";")]
        if any(marker in f for f in frames[-6:] for marker in IDLE_MARKERS):
            idle += count
            continue
        samples += count
        self_time[frames[-1]] += count
        groups[classify(frames)] += count
        for frame in set(frames):
            total_time[frame] += count

    def pct(c: int) -> float:
        return round(100.0 * c / samples, 1) if samples else 0.0

    return {
        "samples": samples,
        "idle_samples": idle,
        "groups_self_pct": {g: pct(c) for g, c in groups.most_common()},
        "top_self": [[f, pct(c)] for f, c in self_time.most_common(top)],
        "top_total": [[f, pct(c)] for f, c in total_time.most_common(top)],
    }


def _short(frame: str) -> str:
    # "handle (gateway/proxy.py:123)" -> "handle (gateway/proxy.py)"; paths shortened.
    frame = re.sub(r":\d+\)$", ")", frame.strip())
    frame = re.sub(r"\(/[^)]*?/(site-packages|lib/python3\.\d+)/", "(", frame)
    return frame.replace(f"({PROJECT}/", "(")


# ----------------------------------------------------------------- report


def machine_info() -> dict[str, str]:
    def cmd(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr) else "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "nginx": cmd(["nginx", "-v"]),
        "haproxy": cmd(["haproxy", "-v"]),
        "ab": cmd(["ab", "-V"]),
        "h2load": cmd(["h2load", "--version"]),
    }
    for module in ("aiohttp", "uvloop", "multidict", "yarl"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = "?"
    info["gateway_source_sha256"] = _source_digest()
    return info


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((PROJECT / "gateway").rglob("*.py")):
        digest.update(str(path.relative_to(PROJECT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _throughput_targets(report: dict[str, Any], name: str, prefix: str) -> list[dict[str, Any]]:
    thr = report.get("throughput", {})
    gw, ng = thr.get(name), thr.get("nginx")
    rows: list[dict[str, Any]] = []
    if gw and ng:
        for mode, key, label in (
            ("keepalive", "keepalive_ratio", "keep-alive req/s >= 0.5x NGINX"),
            ("handshake", "handshake_ratio", "full handshakes/s >= 1.0x NGINX"),
        ):
            g, n = gw[mode]["rps"], ng[mode]["rps"]
            ratio = g / n if g and n else 0.0
            want = TARGETS[key]
            rows.append(
                {
                    "target": prefix + label,
                    "measured": f"{ratio:.3f}x ({g:.0f} vs {n:.0f})",
                    "met": ratio >= want,
                    "by": f"{(ratio / want - 1) * 100:+.0f}% of target"
                    + ("" if ratio >= want else f" (needs {want * n:.0f} req/s)"),
                }
            )
        g99, n99 = gw["keepalive"]["p99_ms"], ng["keepalive"]["p99_ms"]
        if g99 is not None and n99 is not None:
            limit = n99 + TARGETS["p99_slack_ms"]
            rows.append(
                {
                    "target": prefix + "keep-alive p99 <= NGINX p99 + 1 ms",
                    "measured": f"{g99:.1f} ms vs limit {limit:.1f} ms (NGINX {n99:.1f})",
                    "met": g99 <= limit,
                    "by": f"{g99 - limit:+.1f} ms",
                }
            )
    return rows


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _throughput_targets(report, "gateway", "")
    # The compiled build, where it ran: the same targets, its own rows.
    rows += _throughput_targets(report, "compiled", "compiled: ")
    mem = report.get("memory", {}).get("gateway", {})
    for count, entry in sorted(mem.items(), key=lambda item: int(item[0])):
        if "kib_per_connection" in entry:
            want = TARGETS["kib_per_idle_connection"]
            per = entry["kib_per_connection"]
            rows.append(
                {
                    "target": f"RSS per idle mTLS conn <= {want:.0f} KiB ({int(count):,} held)",
                    "measured": f"{per} KiB ({entry['baseline_rss_mb']} -> {entry['rss_mb']} MB,"
                    f" {entry.get('alive', 0)} alive)",
                    "met": per <= want and entry.get("alive", 0) >= int(count),
                    "by": f"{per - want:+.1f} KiB",
                }
            )
    entry = mem.get("10000")
    if entry and "rss_mb" in entry:
        want = TARGETS["rss_10k_mb"]
        held = entry.get("alive", 0)
        rows.append(
            {
                "target": f"RSS with 10,000 idle mTLS conns <= {want:.0f} MB",
                "measured": f"{entry['rss_mb']} MB with {held} held",
                "met": entry["rss_mb"] <= want and held >= 10_000,
                "by": f"{entry['rss_mb'] - want:+.1f} MB",
            }
        )
    return rows + h2_target(report)


def print_report(report: dict[str, Any]) -> None:
    if report.get("identity"):
        print("\n== identity check (one curl through each system, upstream echoes the head)")
    for name, check in report.get("identity", {}).items():
        failed = [k for k, v in check["checks"].items() if not v]
        print(
            f"  {name:8} {'OK ' if check['ok'] else 'BAD'} status {check['status']}"
            f"  no-cert: {check['no_cert']}"
            + (f"  FAILED: {', '.join(failed)} leaked={check['leaked']}" if failed else "")
        )
    thr = report.get("throughput", {})
    if thr:
        print("\n== throughput (median of rounds; latency from ab's percentile table)")
        print("  (other: most CPU, in cores, that other processes used during a round)")
        header = (
            f"  {'system':9}{'mode':10}{'req/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'failed':>8}"
            f"{'non2xx':>8}{'ka reqs':>10}{'cpu us/req':>11}{'other':>7}  all 200"
        )
        print(header)
        for name, modes in thr.items():
            for mode in ("keepalive", "handshake"):
                s = modes.get(mode)
                if not s:
                    continue
                print(
                    f"  {name:9}{mode:10}{s['rps'] or 0:>10.0f}{_f(s['p50_ms'])}{_f(s['p99_ms'])}"
                    f"{s['failed']:>8}{s['non2xx']:>8}{s['keepalive_requests']:>10}"
                    f"{_f(s['proxy_cpu_us'], 11, 0)}{_f(s['other_cpu_cores_max'], 7, 2)}"
                    f"  {'yes' if s['all_ok'] else 'NO'}"
                )
        if "floor" in thr and "nginx" in thr:
            for mode in ("keepalive", "handshake"):
                f, n = thr["floor"][mode]["rps"], thr["nginx"][mode]["rps"]
                if f and n:
                    print(f"  floor/nginx {mode}: {f / n:.3f}")
        if "compiled" in thr:
            for other in ("nginx", "gateway", "floor"):
                if other not in thr:
                    continue
                for mode in ("keepalive", "handshake"):
                    c, o = thr["compiled"][mode]["rps"], thr[other][mode]["rps"]
                    if c and o:
                        print(f"  compiled/{other} {mode}: {c / o:.3f}")
        for other in ("nginx", "haproxy", "pytls", "floor"):
            if "gateway" in thr and other in thr:
                for mode in ("keepalive", "handshake"):
                    g, o = thr["gateway"][mode]["rps"], thr[other][mode]["rps"]
                    if g and o:
                        print(f"  gateway/{other} {mode}: {g / o:.3f}")
    print_h2(report)
    scaling = report.get("scaling")
    if scaling:
        print("\n== gateway --workers 2")
        for mode in ("keepalive", "handshake"):
            s = scaling[mode]
            print(
                f"  {mode:10} {s['rps'] or 0:>9.0f} req/s  p99 {s['p99_ms']} ms"
                f"  x{s.get('vs_1_worker')} of 1 worker  all 200: {s['all_ok']}"
            )
    sysc = report.get("syscalls")
    if sysc and "error" not in sysc:
        print("\n== syscalls per keep-alive request (strace -c on the worker, all threads)")
        for name, e in sysc.items():
            top = ", ".join(f"{k} {v}" for k, v in list(e["per_request"].items())[:6])
            print(f"  {name:8} {e['total_per_request']:6.2f}/req: {top}")
    mem = report.get("memory")
    if mem:
        print("\n== RSS with idle mTLS keep-alive connections (fresh process each)")
        for name, counts in mem.items():
            for count, e in counts.items():
                print(
                    f"  {name:8} {int(count):>6}: baseline {e.get('baseline_rss_mb')} MB -> "
                    f"{e.get('rss_mb')} MB, opened {e.get('opened')}, alive {e.get('alive')}, "
                    f"{e.get('kib_per_connection')} KiB/conn {e.get('error', '')}"
                )
    rows = report.get("targets", [])
    if rows:
        print("\n== targets (issue 12; the h2 row: issue 17)")
        for row in rows:
            print(
                f"  {'met   ' if row['met'] else 'MISSED'} {row['target']}: {row['measured']} ({row['by']})"
            )
    prof = report.get("profile")
    if prof:
        print("\n== profile (py-spy, gateway under keep-alive load)")
        native = prof.get("profile-native.txt", {}).get("summary")
        if native:
            print(f"  --native: {native['samples']} busy samples; self time by group:")
            for group, pct in native["groups_self_pct"].items():
                print(f"    {pct:5.1f}%  {group}")
        summary = prof.get("profile.txt", {}).get("summary")
        if summary:
            print("  Python frames only (C work is charged to the Python caller):")
            print(f"  samples {summary['samples']}; self time by group:")
            for group, pct in summary["groups_self_pct"].items():
                print(f"    {pct:5.1f}%  {group}")
            print("  top self:")
            for frame, pct in summary["top_self"][:12]:
                print(f"    {pct:5.1f}%  {frame}")


def _f(value: float | None, width: int = 8, digits: int = 1) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


# ----------------------------------------------------------------- main


def check_tools(
    names: list[str], upstream: str, profile: bool, syscalls: bool, h2: bool = False
) -> None:
    need = {"ab": "apache2-utils", "curl": "curl"}
    if h2:
        need["h2load"] = "nghttp2-client"
    if syscalls:
        need["strace"] = "strace"
    if "nginx" in names or upstream == "nginx":  # NGINX is also the default upstream
        need["nginx"] = "nginx-light"
    if "haproxy" in names:
        need["haproxy"] = "haproxy"
    missing = {tool: pkg for tool, pkg in need.items() if shutil.which(tool) is None}
    if missing:
        sys.exit(
            f"compare.py: missing {', '.join(missing)}; install with:\n"
            f"  apt-get update && apt-get install -y {' '.join(sorted(set(missing.values())))}"
        )
    if profile and shutil.which("py-spy") is None:
        sys.exit("compare.py: --profile needs py-spy: python3 -m pip install py-spy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark mtls-gateway against NGINX and HAProxy (issue 6)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "-n",
        "--requests",
        type=int,
        default=100_000,
        help="requests per keep-alive ab run (default 100000)",
    )
    parser.add_argument(
        "--handshakes",
        type=int,
        default=3_000,
        help="requests (= full handshakes) per non-keep-alive ab run (default 3000)",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument(
        "--only",
        action="append",
        choices=SYSTEMS,
        help="run only these systems (repeatable); default all; two references: pytls,"
        " a bare uvloop+ssl mTLS server answering itself (no proxying), and floor, the"
        " gateway's TLS layer with a bare relay to the upstream (bench/floor.py)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated: http1 (every HTTP/1.1 phase), h2 (the HTTP/2 row, NGINX and"
        " gateway only, without a client certificate); default both",
    )
    parser.add_argument(
        "--h2-connections", type=int, default=1, help="h2load -c: connections (default 1)"
    )
    parser.add_argument(
        "--h2-streams", type=int, default=32, help="h2load -m: streams per connection (default 32)"
    )
    parser.add_argument(
        "--h2-requests", type=int, help="requests per h2load run (default: --requests)"
    )
    parser.add_argument(
        "--idle",
        default="1000,10000",
        help="idle connection counts for the memory test (default 1000,10000; '' skips)",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip gateway --workers 2")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under load")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument(
        "--syscalls", action="store_true", help="strace -c: syscalls per keep-alive request"
    )
    parser.add_argument("--syscall-requests", type=int, default=5_000)
    parser.add_argument("--upstream", choices=("nginx", "python"), default="nginx")
    parser.add_argument(
        "--gateway-command",
        help="command run as '<CMD> serve --config F --workers N' instead of mtls-gateway"
        " (e.g. 'env MTLS_BENCH_GC=1 python3 bench/variants.py')",
    )
    parser.add_argument(
        "--compiled-command",
        help="the 'compiled' system: an mtls-gateway installed with COMPILE_MTLS_GATEWAY=1"
        " (e.g. /tmp/compiled-venv/bin/mtls-gateway)",
    )
    parser.add_argument(
        "--reference-tickets",
        type=int,
        default=2,
        help="TLS 1.3 tickets of the pytls reference server (default 2, OpenSSL's default)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each ab run, wait up to this many seconds for other load to stop",
    )
    parser.add_argument(
        "--quiet-cores", type=float, default=0.15, help="other load counted as quiet (cores)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--ab-timeout", type=float, default=240.0, help="seconds per ab run")
    parser.add_argument("--open-deadline", type=float, default=240.0)
    parser.add_argument("--out", help="directory for results.json, ab outputs and profiles")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 1)
        args.requests, args.handshakes, args.syscall_requests = 5_000, 300, 1_000
        if args.idle == "1000,10000":
            args.idle = "200"
        args.profile_seconds = min(args.profile_seconds, 5)
    args.idle = [int(x) for x in args.idle.split(",") if x.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes: a comma-separated list of {', '.join(MODES)}")
    if args.h2_requests is None:
        args.h2_requests = args.requests
    args.only = list(dict.fromkeys(args.only)) if args.only else list(SYSTEMS)
    return args


def http1_phases(bench: Bench, report: dict[str, Any]) -> None:
    """Identity check, alternating ab rounds and (--syscalls) strace on every HTTP/1.1 system."""
    args = bench.args
    systems = {name: bench.start(name) for name in args.only}
    report["identity"] = {
        name: bench.verify_identity(s) for name, s in systems.items() if name in PROXIES
    }
    for name, check in report["identity"].items():
        log(f"identity through {name}: {'ok' if check['ok'] else 'FAILED'} {check['checks']}")
    report["throughput"] = throughput_phase(bench, systems)
    if args.syscalls:
        report["syscalls"] = syscalls_phase(bench, systems)
    for system in systems.values():
        bench.stop(system)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    http1, h2 = "http1" in args.modes, "h2" in args.modes
    check_tools(args.only, args.upstream, args.profile and http1, args.syscalls and http1, h2)
    work = Path(tempfile.mkdtemp(prefix="mtls-compare-"))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mtls-compare-out-"))
    out.mkdir(parents=True, exist_ok=True)
    bench: Bench | None = None

    def cleanup() -> None:
        if bench is not None:
            bench.procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)

    def on_signal(sig: int, _frame: object) -> None:
        raise SystemExit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")}
        | {"body_bytes": len(BODY), "keepalive_timeout": KEEPALIVE_TIMEOUT},
    }
    try:
        bench = Bench(args, work, out)
        report["settings"]["nofile"] = bench.nofile
        report["settings"]["gateway_access_log_key"] = bench.access_log_key
        log(f"work dir {work}; results to {out}; RLIMIT_NOFILE {bench.nofile}")
        bench.start_upstream()
        if http1:
            http1_phases(bench, report)
        if h2:
            report["h2"] = h2_phase(bench, args.only, BODY, SPOOFED_HEADERS)
        if http1 and "gateway" in args.only and not args.no_scaling:
            report["scaling"] = scaling_phase(bench, report["throughput"].get("gateway"))
        if http1 and args.profile and "gateway" in args.only:
            report["profile"] = profile_phase(bench, out)
        if http1 and args.idle:
            report["memory"] = memory_phase(bench, args.only)
        report["targets"] = targets(report)
    finally:
        report["elapsed_seconds"] = round(time.monotonic() - started, 1)
        if bench is not None:
            report["gateway_sources_started"] = sorted(set(bench.gateway_sources))
            if len(report["gateway_sources_started"]) > 1:
                log("WARNING: gateway/ changed during the run; phases measured different code")
        (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
        if bench is not None:
            bench.procs.stop_all()
    print_report(report)
    print(f"\nresults: {out / 'results.json'} (elapsed {report['elapsed_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
