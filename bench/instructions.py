#!/usr/bin/env python3
"""Instructions per keep-alive request, under callgrind: an A/B of two source trees.

On a shared 2-core VM, req/s moves by up to ±30 % from one round to the next,
so a change worth 5 % cannot be seen in ``compare.py``'s ratios.  Valgrind's
callgrind counts the instructions the gateway's process executes (user
space only: the kernel's share is not in it), which is the same from run to
run whatever else the machine does.  So each tree named on the command line
is run, in turn, as the gateway under callgrind, behind the same upstream
(NGINX, as in ``compare.py``), with the same certificates and config:

1. a few warm requests and ``--warm`` keep-alive requests (imports, caches,
   the upstream pool);
2. the counters are zeroed (``callgrind_control -z``);
3. ``ab -k -c 32 -n N`` over mTLS (its 32 connections' handshakes are in
   the count: they are the same for every tree);
4. the counters are dumped (``callgrind_control -d``), the total divided by N.

With ``--handshakes``, ``ab`` runs without ``-k``: one full mTLS handshake per
request, so the figure is per connection.

    python3 bench/instructions.py before=/path/to/old/checkout after=.
    python3 bench/instructions.py --handshakes -n 1000 before=/path/to/old/checkout after=.

Each ``NAME=DIR`` puts ``DIR`` first on ``PYTHONPATH`` (a ``git worktree`` of
the commit to compare).  A few hundred requests per second run under
callgrind, so 3,000 requests take about a minute per tree, start-up
included.  The figure includes what batching does: 32 connections answered
in one loop iteration cost fewer instructions each than one at a time, so
counts move by ±1 % between runs of one tree.

Needs ``valgrind`` (``callgrind_control`` comes with it), ``nginx``, ``ab``
and ``curl``, as ``compare.py`` does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import Bench, System, parse_args, wait_port  # bench/ is not a package

_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)
_COMPLETE = re.compile(r"Complete requests:\s+(\d+)")
_FAILED = re.compile(r"Failed requests:\s+(\d+)")


def measure(
    bench: Bench,
    name: str,
    tree: Path,
    config: Path,
    port: int,
    n: int,
    warm: int,
    *,
    keepalive: bool = True,
) -> int:
    """Instructions for ``n`` requests through the gateway from ``tree``
    (``keepalive`` False: one full mTLS handshake per request)."""
    out = bench.work / f"callgrind.{name}"
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    argv += [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    with (bench.work / f"valgrind-{name}.log").open("w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=bench.work, stdout=log, stderr=log)
    try:
        wait_port(port, proc, timeout=300)
        system = System("gateway", port, proc, 1)
        for _ in range(3):
            if bench.warm_request(system) != "200":
                raise SystemExit(f"{name}: the warm request through {tree} did not answer 200")
        ab = ["ab", "-q", "-c", "32", "-E", str(bench.pki.client_combined)]
        if keepalive:
            ab.append("-k")
        url = f"https://127.0.0.1:{port}/"
        subprocess.run([*ab, "-n", str(warm), url], capture_output=True, check=False)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        run = subprocess.run([*ab, "-n", str(n), url], capture_output=True, text=True, check=False)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        complete, failed = _COMPLETE.search(run.stdout), _FAILED.search(run.stdout)
        if not complete or int(complete.group(1)) != n or not failed or failed.group(1) != "0":
            raise SystemExit(f"{name}: ab did not complete {n} requests:\n{run.stdout}")
        dump = Path(f"{out}.1")  # the first dump: the one after zeroing
        deadline = time.monotonic() + 60
        while not (dump.exists() and _TOTAL.search(dump.read_text())):
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: no callgrind dump in {dump}")
            time.sleep(0.5)
        found = _TOTAL.search(dump.read_text())
        assert found is not None
        return int(found.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=DIR", help="source trees to compare")
    parser.add_argument("-n", "--requests", type=int, default=3000)
    parser.add_argument("--warm", type=int, default=500, help="requests before zeroing")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each tree's dump to DIR/callgrind.NAME (for callgrind_annotate --inclusive=yes)",
    )
    parser.add_argument(
        "--handshakes",
        action="store_true",
        help="no keep-alive: instructions per connection (full mTLS handshake and one request)",
    )
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "nginx", "ab", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} not found (apt-get install -y valgrind nginx-light apache2-utils curl)"
            )
    trees = []
    for spec in args.trees:
        name, sep, directory = spec.partition("=")
        if not sep or not (Path(directory) / "gateway" / "__init__.py").exists():
            raise SystemExit(f"{spec}: expected NAME=DIR, DIR holding the gateway package")
        trees.append((name, Path(directory).resolve()))
    work = Path(tempfile.mkdtemp(prefix="mtls-instructions-"))
    bench = Bench(parse_args(["--rounds", "1"]), work, work)
    try:
        bench.start_upstream()
        # The config compare.py writes for its gateway, on a port kept for every tree.
        system = bench.start("gateway")
        port, config = system.port, work / "gateway.yaml"
        bench.stop(system)
        results = {}
        for name, tree in trees:
            total = measure(
                bench,
                name,
                tree,
                config,
                port,
                args.requests,
                args.warm,
                keepalive=not args.handshakes,
            )
            results[name] = total / args.requests
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / f"callgrind.{name}.1", args.keep / f"callgrind.{name}")
            unit = "connection" if args.handshakes else "request"
            print(
                f"{name:>10}: {results[name]:>10,.0f} instructions per {unit} ({tree})", flush=True
            )
        first = next(iter(results.values()))
        for name, per in results.items():
            print(f"{name:>10}: {(per / first - 1) * 100:+.1f} % against {trees[0][0]}")
    finally:
        bench.procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
