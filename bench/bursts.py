#!/usr/bin/env python3
"""Burst benchmark: does RSS come back after bursts of callers? (issue 12, point 4)

For each system (the gateway and NGINX, one worker each, set up as in
``compare.py``: same certificates, same NGINX upstream), a fresh process:

1. one warm request, then the **baseline** VmRSS of the worker;
2. ``--bursts`` (16) bursts of ``--size`` (2,000) concurrent mTLS callers: the
   client opens every connection first (full handshake with the client
   certificate, ``--parallel`` in flight), then sends one request on all of
   them at once, reads every answer and closes them all.  So up to ``--size``
   requests are in the proxy together, each wanting an upstream connection:
   the case that left 2,000 idle upstream sockets behind;
3. VmRSS after each burst, then every 5 s for ``--settle`` (60) seconds.

Beside RSS it records the proxy's established connections to the upstream
port (from ``/proc/net/tcp``): what its idle pool holds.  Target: RSS
``--settle`` seconds after the last burst within 10 % of the baseline.

Then, unless ``--idle ''``, compare.py's idle phase for the same systems:
RSS per idle mTLS connection with 10,000 held (target <= 30 KiB).

    python3 bench/bursts.py --out /tmp/bursts                 # both systems (~8 min)
    python3 bench/bursts.py --bursts 2 --size 300 --settle 10 --idle ''   # smoke
    python3 bench/bursts.py --only gateway --gateway-command \\
        "env MTLS_BENCH_STATS=/tmp/stats.jsonl python3 bench/variants.py"

``bursts.py client …`` is the burst client itself (run as a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import (  # bench/ is not a package: imported from its directory
    HERE,
    Bench,
    System,
    _read_json_line,
    check_tools,
    log,
    machine_info,
    memory_phase,
    rss_kib,
)

RSS_BACK_WITHIN = 0.10  # the target: back within 10 % of the baseline
KIB_PER_IDLE_CONNECTION = 30.0
SAMPLE_EVERY = 5.0
TCP_ESTABLISHED = "01"

# --------------------------------------------------------------------- the client


async def _burst(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    gate = asyncio.Semaphore(args.parallel)
    errors: collections.Counter[str] = collections.Counter()
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-bursts\r\n\r\n"

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with gate:
            try:
                async with asyncio.timeout(30):
                    return await asyncio.open_connection(
                        args.host, args.port, ssl=context, server_hostname="localhost"
                    )
            except Exception as exc:
                errors[f"connect {type(exc).__name__}"] += 1
                return None

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        try:
            async with asyncio.timeout(60):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                return int(head.split(b" ", 2)[1])
        except Exception as exc:
            errors[f"request {type(exc).__name__}"] += 1
            return 0

    started = time.monotonic()
    opened = [c for c in await asyncio.gather(*(connect() for _ in range(args.count))) if c]
    handshakes = time.monotonic() - started
    statuses = collections.Counter(await asyncio.gather(*(exchange(r, w) for r, w in opened)))
    for _, writer in opened:
        writer.transport.abort()
    return {
        "opened": len(opened),
        "ok200": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "handshake_seconds": round(handshakes, 2),
        "seconds": round(time.monotonic() - started, 2),
    }


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bursts.py client")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=128, help="handshakes in flight")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        report = uvloop.run(_burst(args))
    except ImportError:
        report = asyncio.run(_burst(args))
    print(json.dumps(report), flush=True)
    return 0


# --------------------------------------------------------------------- measuring


def established_to(port: int) -> int:
    """Established TCP connections whose remote end is 127.0.0.1/::1 ``port``."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == TCP_ESTABLISHED and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _sample(bench: Bench, system: System, pids: list[int], label: str) -> dict[str, Any]:
    sample = {
        "at": label,
        "rss_mb": round(sum(rss_kib(p) for p in pids) / 1024, 1),
        "hwm_mb": round(sum(_hwm_kib(p) for p in pids) / 1024, 1),
        "upstream_conns": established_to(bench.upstream_port),
        "downstream_conns": established_to(system.port),
        "loadavg": os.getloadavg()[0],
    }
    return sample


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def burst_phase(bench: Bench, name: str) -> dict[str, Any]:
    args = bench.args
    system = bench.start(name, tag="-bursts")
    entry: dict[str, Any] = {"bursts": args.bursts, "size": args.size, "settle": args.settle}
    try:
        entry["warm_status"] = bench.warm_request(system)
        time.sleep(2.0)
        entry["busy_before_cores"] = bench.wait_quiet()
        pids = system.worker_pids()
        baseline = _sample(bench, system, pids, "baseline")
        samples = [baseline]
        clients: list[dict[str, Any]] = []
        log(f"bursts {name}: baseline {baseline['rss_mb']} MB")
        for i in range(1, args.bursts + 1):
            proc = bench.procs.start(
                f"burst-{name}-{i}",
                [
                    sys.executable,
                    str(HERE / "bursts.py"),
                    "client",
                    "--port",
                    str(system.port),
                    "--count",
                    str(args.size),
                    "--parallel",
                    str(args.parallel),
                    "--cert",
                    str(bench.pki.client_cert),
                    "--key",
                    str(bench.pki.client_key),
                    "--ca",
                    str(bench.pki.ca),
                ],
                stdout=subprocess.PIPE,
            )
            clients.append(_read_json_line(proc, 300))
            proc.wait(timeout=30)
            bench.procs.stop(f"burst-{name}-{i}")
            time.sleep(0.5)  # the last closes reach the proxy
            samples.append(_sample(bench, system, pids, f"burst {i}"))
            log(
                f"bursts {name}: burst {i}: {clients[-1]['ok200']}/{args.size} ok, "
                f"RSS {samples[-1]['rss_mb']} MB, {samples[-1]['upstream_conns']} upstream conns"
            )
        waited = 0.0
        while waited < args.settle:
            step = min(SAMPLE_EVERY, args.settle - waited)
            time.sleep(step)
            waited += step
            samples.append(_sample(bench, system, pids, f"+{waited:.0f}s"))
        final = samples[-1]
        entry.update(
            baseline_rss_mb=baseline["rss_mb"],
            after_bursts_rss_mb=samples[args.bursts]["rss_mb"],
            peak_rss_mb=max(s["hwm_mb"] for s in samples),
            final_rss_mb=final["rss_mb"],
            final_upstream_conns=final["upstream_conns"],
            max_upstream_conns=max(s["upstream_conns"] for s in samples),
            growth=round(final["rss_mb"] / baseline["rss_mb"] - 1, 3),
            ok=sum(c["ok200"] for c in clients),
            requested=args.bursts * args.size,
            client_errors=sum(
                (collections.Counter(c["errors"]) for c in clients), collections.Counter()
            ),
            samples=samples,
            clients=clients,
        )
        log(
            f"bursts {name}: RSS {baseline['rss_mb']} -> {entry['after_bursts_rss_mb']} MB "
            f"after the bursts -> {final['rss_mb']} MB {args.settle:.0f} s later "
            f"({entry['growth']:+.1%}); upstream conns {final['upstream_conns']}"
        )
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        log(f"bursts {name}: {entry['error']}")
    finally:
        bench.stop(system)
    return entry


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, entry in report.get("bursts", {}).items():
        if "final_rss_mb" in entry:
            rows.append(
                {
                    "system": name,
                    "target": f"RSS {entry['settle']:.0f} s after the bursts within 10 % of baseline",
                    "measured": f"{entry['baseline_rss_mb']} -> {entry['final_rss_mb']} MB "
                    f"({entry['growth']:+.1%})",
                    "met": entry["growth"] <= RSS_BACK_WITHIN,
                }
            )
    for name, counts in report.get("memory", {}).items():
        for count, entry in counts.items():
            if "kib_per_connection" in entry:
                rows.append(
                    {
                        "system": name,
                        "target": f"RSS per idle mTLS connection ({int(count):,} held) <= 30 KiB",
                        "measured": f"{entry['kib_per_connection']} KiB "
                        f"({entry['baseline_rss_mb']} -> {entry['rss_mb']} MB, "
                        f"{entry['alive']} alive)",
                        "met": entry["kib_per_connection"] <= KIB_PER_IDLE_CONNECTION,
                    }
                )
    return rows


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=("gateway", "nginx"))
    parser.add_argument("--bursts", type=int, default=16)
    parser.add_argument("--size", type=int, default=2000, help="concurrent callers per burst")
    parser.add_argument("--parallel", type=int, default=128, help="handshakes in flight")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds watched after")
    parser.add_argument("--idle", default="10000", help="idle counts for compare's phase; ''")
    parser.add_argument("--open-deadline", type=float, default=240.0)
    parser.add_argument("--gateway-command", default="")
    parser.add_argument("--upstream", choices=("nginx", "python"), default="nginx")
    parser.add_argument("--wait-quiet", type=float, default=60.0)
    parser.add_argument("--quiet-cores", type=float, default=0.15)
    parser.add_argument("--out", default="")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    args.only = args.only or ["gateway", "nginx"]
    args.idle = [int(x) for x in args.idle.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.only, args.upstream, False, False)
    work = Path(tempfile.mkdtemp(prefix="mtls-bursts-"))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mtls-bursts-out-"))
    out.mkdir(parents=True, exist_ok=True)
    bench: Bench | None = None

    def cleanup() -> None:
        if bench is not None:
            bench.procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda sig, _frame: sys.exit(128 + sig))
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
    }
    try:
        bench = Bench(args, work, out)
        bench.start_upstream()
        report["bursts"] = {name: burst_phase(bench, name) for name in args.only}
        if args.idle:
            report["memory"] = memory_phase(bench, args.only)
        report["targets"] = targets(report)
    finally:
        report["elapsed_seconds"] = round(time.monotonic() - started, 1)
        if bench is not None:
            report["gateway_sources_started"] = sorted(set(bench.gateway_sources))
        (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
        if bench is not None:
            bench.procs.stop_all()
    for row in report.get("targets", []):
        print(
            f"{'MET ' if row['met'] else 'MISS'} {row['system']:8} {row['target']}: {row['measured']}"
        )
    print(f"results: {out / 'results.json'} (elapsed {report['elapsed_seconds']} s)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        sys.exit(client_main(sys.argv[2:]))
    sys.exit(main())
