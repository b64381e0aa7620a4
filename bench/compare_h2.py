"""The HTTP/2 row of bench/compare.py (issue 17): h2load against NGINX and the gateway.

Both systems are driven by ``h2load`` (nghttp2-client) over TLS with ALPN
``h2``: ``-c`` connections, each with ``-m`` concurrent streams (default 1 x
32, so 32 streams in flight, as ``ab -c 32`` keeps 32 requests in flight on
HTTP/1.1).

**No client certificate on this row.** Debian's h2load cannot present one
(it has no certificate option), so both systems are benched on a route that
does not require one:

* NGINX: a ``listen ... ssl http2`` server with ``ssl_verify_client
  optional``, proxying ``/`` to the same upstream with the same header work
  as the HTTP/1.1 front (identity headers set from the certificate, which is
  absent here, so they are removed; ``X-Forwarded-*`` set), no 403;
* the gateway: a listener with ``client_certs: optional`` and ``http2:
  true``, one ``auth: none`` route to the same upstream (identity headers
  stripped, ``X-Forwarded-*`` set, as on every route).

The TLS handshake therefore carries no client certificate and no chain
verification, and no registry lookup happens: the row measures HTTP/2 framing,
HPACK, multiplexing and proxying, not mTLS. Each system is first checked with
one ``curl --http2`` without a certificate through ``/__echo``: HTTP/2 must be
spoken, the answer 200, and no caller-sent identity header may reach the
upstream.
"""

from __future__ import annotations

import functools
import math
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nginx_conf import NGINX_BACKEND, NGINX_HEAD, NGINX_IDENTITY_HEADERS, NGINX_PROXY, NGINX_TLS

if TYPE_CHECKING:  # compare.py imports this module, never the other way (it runs as __main__)
    from compare import Bench, System

H2_SYSTEMS = ("nginx", "gateway")  # what Bench.start(..., h2=True) can start
H2_TARGET_RATIO = 0.5
NO_CLIENT_CERT_NOTE = (
    "both systems run without a client certificate: Debian's h2load cannot present one,"
    " so NGINX uses ssl_verify_client optional and the gateway client_certs: optional"
    " with an auth: none route (no mTLS handshake work, no registry lookup)"
)

NGINX_H2 = (
    NGINX_HEAD
    + """\
    http2_max_requests 100000000;
"""
    + NGINX_BACKEND
    + """\
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=1024;
"""
    + NGINX_TLS
    + """\
        # h2load sends no client certificate (see NO_CLIENT_CERT_NOTE).
        ssl_verify_client optional;
        location / {{
"""
    + NGINX_PROXY
    + NGINX_IDENTITY_HEADERS
)


@dataclass
class H2loadResult:
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    complete: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    non2xx: int = 0
    data_bytes: int | None = None
    protocol: str = ""
    tls: str = ""
    exit_code: int = 0
    wall_seconds: float = 0.0
    proxy_cpu_us: float | None = None
    upstream_cpu_us: float | None = None
    client_cpu_us: float | None = None
    busy_before_cores: float | None = None
    other_cpu_cores: float | None = None
    error: str = ""

    def all_ok(self, body_bytes: int) -> bool:
        return (
            self.exit_code == 0
            and self.complete > 0
            and self.failed == self.errored == self.timeout == self.non2xx == 0
            and self.protocol == "h2"
            and self.data_bytes == self.complete * body_bytes
        )


def parse_h2load(output: str) -> H2loadResult:
    """h2load's summary: req/s, request counts, status classes, data bytes, protocol."""
    r = H2loadResult()

    def grab(pattern: str) -> str | None:
        m = re.search(pattern, output, re.MULTILINE)
        return m.group(1) if m else None

    r.rps = float(grab(r"^finished in [\d.]+\w+, ([\d.]+) req/s") or 0)
    counts = re.search(
        r"^requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed,"
        r" (\d+) errored, (\d+) timeout",
        output,
        re.MULTILINE,
    )
    if counts:
        r.complete, r.failed, r.errored, r.timeout = (int(g) for g in counts.groups())
    statuses = re.search(
        r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.MULTILINE
    )
    if statuses:
        r.non2xx = sum(int(g) for g in statuses.groups()[1:])
    data = grab(r"^traffic: .*? \((\d+)\) data")
    r.data_bytes = int(data) if data is not None else None
    r.protocol = grab(r"^Application protocol: (\S+)") or ""
    r.tls = grab(r"^TLS Protocol: (\S+)") or ""
    if r.complete == 0:
        r.error = " | ".join(line for line in output.splitlines()[-3:] if line.strip())
    return r


def add_latencies(result: H2loadResult, log_text: str) -> None:
    """p50/p99/max/mean from h2load --log-file (start µs, status, µs to end of response)."""
    durations = sorted(
        int(cols[2]) / 1000
        for line in log_text.splitlines()
        if len(cols := line.split("\t")) >= 3 and cols[1] != "-1" and cols[2].isdigit()
    )
    if not durations:
        return

    def nearest_rank(fraction: float) -> float:
        # The smallest duration with at least that fraction of requests at or below it.
        return round(durations[max(0, math.ceil(fraction * len(durations)) - 1)], 3)

    result.p50_ms, result.p99_ms = nearest_rank(0.50), nearest_rank(0.99)
    result.max_ms = round(durations[-1], 3)
    result.mean_ms = round(statistics.fmean(durations), 3)


@functools.cache
def alpn_option() -> str:
    """h2load's option for the ALPN list (RFC 7301), offered as h2 only.

    nghttp2 1.52 (Debian 12) names it --npn-list (used for ALPN and NPN alike) and
    refuses --alpn-list; newer releases have --alpn-list: ask the installed one.
    """
    usage = subprocess.run(
        ["h2load", "--help"], capture_output=True, text=True, timeout=10, check=False
    )
    return "--alpn-list" if "--alpn-list" in usage.stdout else "--npn-list"


def h2load(bench: Bench, system: System, *, n: int, label: str) -> H2loadResult:
    """One h2load run; CPU per request measured as for ab (Bench.run_load)."""
    args = bench.args
    log_file = bench.work / f"h2load-{label}.tsv"
    argv = ["h2load", "-n", str(n), "-c", str(args.h2_connections)]
    argv += ["-m", str(args.h2_streams), f"{alpn_option()}=h2", "--log-file", str(log_file)]
    argv.append(f"https://127.0.0.1:{system.port}/")
    load = bench.run_load(system, argv)
    (bench.out / "h2load").mkdir(exist_ok=True)
    (bench.out / "h2load" / f"{label}.txt").write_text(" ".join(argv) + "\n\n" + load.output)
    result = parse_h2load(load.output)
    if log_file.exists():
        add_latencies(result, log_file.read_text())
        log_file.unlink()  # one line per request: large, and summarised above
    result.exit_code = load.exit_code
    result.wall_seconds = load.wall_seconds
    result.busy_before_cores = load.busy_before_cores
    result.other_cpu_cores = load.other_cpu_cores
    if result.complete:
        result.proxy_cpu_us = load.per_request_us(load.proxy_cpu, result.complete)
        result.upstream_cpu_us = load.per_request_us(load.upstream_cpu, result.complete)
        result.client_cpu_us = load.per_request_us(load.client_cpu, result.complete)
    return result


def verify_h2(
    bench: Bench, system: System, spoofed_headers: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
    """One curl --http2 without a certificate: HTTP/2, 200, no spoofed header upstream."""
    body = bench.work / f"echo-{system.name}-h2.txt"
    argv = ["curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(bench.pki.ca)]
    argv += ["-o", str(body), "-w", "%{http_code} %{http_version}"]
    for name, value in spoofed_headers:
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"https://127.0.0.1:{system.port}/__echo")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    status, _, version = result.stdout.strip().partition(" ")
    raw = body.read_bytes().decode(errors="replace") if body.exists() else ""
    (bench.out / body.name).write_text(raw)
    seen = [line.partition(":") for line in raw.split("\r\n")[1:] if ":" in line]
    leaked = sorted({n.strip() for n, _, v in seen if "spoofed" in v})
    checks = {
        "status_200": status == "200",
        "http2": version == "2",
        "no_spoofed_header": not leaked,
    }
    return {"ok": all(checks.values()), "checks": checks, "status": status, "leaked": leaked}


def summarise_h2(results: list[H2loadResult], body_bytes: int) -> dict[str, Any]:
    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    return {
        "rounds": len(results),
        "rps": med([r.rps for r in results]),
        "rps_each": [r.rps for r in results],
        "p50_ms": med([r.p50_ms for r in results]),
        "p99_ms": med([r.p99_ms for r in results]),
        "max_ms": med([r.max_ms for r in results]),
        "complete": sum(r.complete for r in results),
        "failed": sum(r.failed + r.errored + r.timeout for r in results),
        "non2xx": sum(r.non2xx for r in results),
        "all_ok": all(r.all_ok(body_bytes) for r in results),
        "proxy_cpu_us": med([r.proxy_cpu_us for r in results]),
        "upstream_cpu_us": med([r.upstream_cpu_us for r in results]),
        "client_cpu_us": med([r.client_cpu_us for r in results]),
        "other_cpu_cores_max": max((r.other_cpu_cores or 0.0 for r in results), default=0.0),
        "protocol": sorted({r.protocol for r in results if r.protocol}),
        "tls": sorted({r.tls for r in results if r.tls}),
        "errors": sorted({r.error for r in results if r.error}),
        "raw": [asdict(r) for r in results],
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def h2_phase(
    bench: Bench, names: list[str], body: str, spoofed_headers: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
    """Fresh HTTP/2 NGINX and gateway, checked, then alternating h2load rounds.

    body is what the upstream answers (its length checks every answer's data).
    """
    args = bench.args
    names = [name for name in names if name in H2_SYSTEMS]
    systems = {name: bench.start(name, tag="-h2", h2=True) for name in names}
    report: dict[str, Any] = {
        "client_certificate": "none",
        "why": NO_CLIENT_CERT_NOTE,
        "connections": args.h2_connections,
        "streams_per_connection": args.h2_streams,
        "requests_per_run": args.h2_requests,
    }
    log(f"h2: {NO_CLIENT_CERT_NOTE}")
    try:
        report["identity"] = {
            name: verify_h2(bench, s, spoofed_headers) for name, s in systems.items()
        }
        for name, check in report["identity"].items():
            log(f"h2 check through {name}: {'ok' if check['ok'] else 'FAILED'} {check['checks']}")
        raw: dict[str, list[H2loadResult]] = {name: [] for name in systems}
        for name, system in systems.items():  # warm-up, not recorded
            h2load(bench, system, n=max(args.h2_requests // 20, 500), label=f"warm-{name}-h2")
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                res = h2load(bench, systems[name], n=args.h2_requests, label=f"r{rnd}-{name}-h2")
                raw[name].append(res)
                log(
                    f"round {rnd + 1}/{args.rounds} {name:8} h2        {res.rps:9.1f} req/s"
                    f"  p50 {res.p50_ms} p99 {res.p99_ms} ms  failed {res.failed}"
                    f"  non-2xx {res.non2xx}  {res.protocol or '?'}"
                    f"  cpu {res.proxy_cpu_us} us/req  other load {res.other_cpu_cores} cores"
                    f"{'' if res.all_ok(len(body)) else '  NOT ALL OK'}"
                    f"{f'  error: {res.error}' if res.error else ''}"
                )
    finally:
        for system in systems.values():
            bench.stop(system)
    for name, results in raw.items():
        report[name] = summarise_h2(results, len(body))
    gw, ng = report.get("gateway", {}).get("rps"), report.get("nginx", {}).get("rps")
    report["ratio_gateway_nginx"] = round(gw / ng, 3) if gw and ng else None
    return report


def h2_target(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue 17 target row, as compare.targets() builds the issue 6 rows."""
    h2 = report.get("h2", {})
    gw, ng = h2.get("gateway", {}).get("rps"), h2.get("nginx", {}).get("rps")
    if not (gw and ng):
        return []
    ratio = gw / ng
    return [
        {
            "target": "h2 req/s >= 0.5x NGINX (no client certificate)",
            "measured": f"{ratio:.3f}x ({gw:.0f} vs {ng:.0f})",
            "met": ratio >= H2_TARGET_RATIO,
            "by": f"{(ratio / H2_TARGET_RATIO - 1) * 100:+.0f}% of target"
            + ("" if ratio >= H2_TARGET_RATIO else f" (needs {H2_TARGET_RATIO * ng:.0f} req/s)"),
        }
    ]


def _cell(value: float | None, width: int = 8, digits: int = 1) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def print_h2(report: dict[str, Any]) -> None:
    h2 = report.get("h2")
    if not h2:
        return
    print(
        f"\n== HTTP/2 (h2load -c {h2['connections']} -m {h2['streams_per_connection']},"
        " ALPN h2, median of rounds; latency from h2load --log-file)"
    )
    print(f"  NOTE: {h2['why']}")
    for name, check in h2.get("identity", {}).items():
        failed = [k for k, v in check["checks"].items() if not v]
        print(
            f"  check {name:8} {'OK ' if check['ok'] else 'BAD'} status {check['status']}"
            + (f"  FAILED: {', '.join(failed)} leaked={check['leaked']}" if failed else "")
        )
    print(
        f"  {'system':9}{'mode':10}{'req/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'failed':>8}"
        f"{'non2xx':>8}{'cpu us/req':>11}{'other':>7}  all 200"
    )
    for name in H2_SYSTEMS:
        s = h2.get(name)
        if not s:
            continue
        print(
            f"  {name:9}{'h2':10}{s['rps'] or 0:>10.0f}{_cell(s['p50_ms'])}{_cell(s['p99_ms'])}"
            f"{s['failed']:>8}{s['non2xx']:>8}{_cell(s['proxy_cpu_us'], 11, 0)}"
            f"{_cell(s['other_cpu_cores_max'], 7, 2)}  {'yes' if s['all_ok'] else 'NO'}"
        )
    if h2.get("ratio_gateway_nginx") is not None:
        print(f"  gateway/nginx h2: {h2['ratio_gateway_nginx']:.3f}")
