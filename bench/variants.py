"""Run ``mtls-gateway`` with what-if changes applied at start, to size a change before making it.

Nothing in gateway/ is modified: each switch patches a library default in this
process only, then hands over to ``gateway.cli.main.main``.  Used by RESULTS.md's
"expected win" figures:

    MTLS_BENCH_GC=1        gc.freeze() after imports and a gen-0 threshold of 50,000
    MTLS_BENCH_NOFREEZE=1  the gc.freeze() server.py does at start becomes a no-op
    MTLS_BENCH_TRIM=S      glibc malloc_trim(0) every S seconds, from a thread (ctypes)
    MTLS_BENCH_POOL_IDLE=N the upstream pool keeps N idle connections per origin,
                           whatever limits.upstream_idle_connections says (a large
                           N is the unbounded pool before issue 12)
    MTLS_BENCH_STATS=PATH  one JSON line a second appended to PATH: VmRSS, glibc
                           mallinfo2 (heap in use / free but held), Python's
                           allocated blocks, live pyOpenSSL connections; each
                           time PATH.malloc appears, sys._debugmallocstats()
                           (pymalloc's arenas, pools, blocks by size class)
                           goes to PATH.malloc.HHMMSS
    MTLS_BENCH_TRACE=1     with STATS: tracemalloc on; each time PATH.snap appears,
                           the top 25 allocation sites by growth since the first
                           snapshot go to PATH.snap.N, then what a gc.collect()
                           frees (cyclic garbage); slow: a diagnostic only

    python3 bench/compare.py --only gateway --gateway-command \
        "env MTLS_BENCH_GC=1 python3 bench/variants.py"

(``MTLS_BENCH_TICKETS`` and ``MTLS_BENCH_COALESCE`` patched stdlib ``ssl``
server contexts and aiohttp's response writer; since the pyOpenSSL TLS
layer and the own HTTP/1.1 protocol, neither is on the data path, and both
switches are gone.  RESULTS.md's figures for them date from before.)
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import sys
import threading
import time
import tracemalloc
import weakref
from typing import Any


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _mapped_rss_kib() -> dict[str, int]:
    """RSS by kind of mapping (/proc/self/smaps): malloc's brk heap, anonymous
    mappings (CPython's pymalloc arenas, malloc's mmap'd chunks and thread
    arenas; adjacent ones merge, so they cannot be told apart), files."""
    kinds = {"brk_heap_kib": 0, "anon_kib": 0, "files_kib": 0}
    kind = "anon_kib"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else ""
                if name == "[heap]":
                    kind = "brk_heap_kib"
                elif name.startswith("/"):
                    kind = "files_kib"
                else:
                    kind = "anon_kib"
            elif head and head[0] == "Rss:":
                kinds[kind] += int(head[1])
    return kinds


def _start_stats(path: str) -> None:
    from OpenSSL import SSL

    live: weakref.WeakSet[Any] = weakref.WeakSet()
    init = SSL.Connection.__init__

    def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        live.add(self)

    SSL.Connection.__init__ = tracked  # type: ignore[method-assign]
    from gateway.ops.heap import mallinfo  # the gateway's own, not a copy

    trace = os.environ.get("MTLS_BENCH_TRACE") == "1"
    if trace:
        tracemalloc.start(4)
    snapshots: list[tracemalloc.Snapshot] = []

    def snapshot_if_asked() -> None:
        trigger = path + ".snap"
        if not trace or not os.path.exists(trigger):
            return
        os.unlink(trigger)
        snapshots.append(tracemalloc.take_snapshot())
        with open(f"{trigger}.{len(snapshots)}", "w") as out:
            for stat in snapshots[-1].compare_to(snapshots[0], "traceback")[:25]:
                out.write(f"{stat.size_diff / 1024:.0f} KiB, {stat.count_diff} blocks\n")
                out.write("".join(f"    {line}\n" for line in stat.traceback.format()))
            # What only the cyclic collector would free: garbage in reference cycles.
            freed = gc.collect()
            after = tracemalloc.take_snapshot()
            out.write(f"\n== gc.collect() freed {freed} objects; the sites it freed most:\n")
            stats = sorted(after.compare_to(snapshots[-1], "traceback"), key=lambda s: s.size_diff)
            for stat in stats[:15]:
                out.write(f"{stat.size_diff / 1024:.0f} KiB, {stat.count_diff} blocks\n")
                out.write("".join(f"    {line}\n" for line in stat.traceback.format()))

    def mallocstats_if_asked() -> None:
        # CPython's allocator statistics (arenas, pools and blocks by size
        # class) go to fd 2: pointed at a file for the call.
        trigger = path + ".malloc"
        if not os.path.exists(trigger):
            return
        os.unlink(trigger)
        target = f"{trigger}.{time.strftime('%H%M%S')}"
        saved = os.dup(2)
        with open(target, "w") as dump:
            os.dup2(dump.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    def report() -> None:
        with open(path, "a") as out:
            while True:
                snapshot_if_asked()
                mallocstats_if_asked()
                info = mallinfo()
                assert info is not None, "MTLS_BENCH_STATS needs glibc's mallinfo2"
                line = {
                    "time": round(time.time(), 1),
                    "rss_kib": _vm_rss_kib(),
                    "heap_kib": (info.arena + info.hblkhd) // 1024,
                    "heap_in_use_kib": info.uordblks // 1024,
                    "heap_free_kib": info.fordblks // 1024,
                    "heap_top_releasable_kib": info.keepcost // 1024,
                    "python_blocks": sys.getallocatedblocks(),
                    "tls_connections_live": len(live),
                    "gc_frozen": gc.get_freeze_count(),
                    "trim_ms_last": _trim_ms[-1] if _trim_ms else None,
                    "trim_ms_max": max(_trim_ms) if _trim_ms else None,
                } | _mapped_rss_kib()
                out.write(json.dumps(line) + "\n")
                out.flush()
                time.sleep(1.0)

    threading.Thread(target=report, name="bench-stats", daemon=True).start()


_trim_ms: list[float] = []


def _start_trim(seconds: float) -> None:
    libc = _libc()

    def trim() -> None:
        while True:
            time.sleep(seconds)
            started = time.perf_counter()
            libc.malloc_trim(0)  # ctypes releases the GIL for the call
            _trim_ms.append(round((time.perf_counter() - started) * 1000, 2))

    threading.Thread(target=trim, name="bench-trim", daemon=True).start()


def apply() -> list[str]:
    applied: list[str] = []
    if os.environ.get("MTLS_BENCH_GC") == "1":
        for module in ("aiohttp.web", "gateway.app", "gateway.server", "gateway.supervisor"):
            importlib.import_module(module)  # imported now, so that freeze() covers them
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 50)
        applied.append("gc.freeze + threshold 50000")
    if os.environ.get("MTLS_BENCH_NOFREEZE") == "1":
        gc.freeze = lambda: None
        applied.append("no gc.freeze")
    idle = os.environ.get("MTLS_BENCH_POOL_IDLE")
    if idle is not None:
        from gateway import upstream

        pool_init = upstream.UpstreamPool.__init__

        def with_idle(self: upstream.UpstreamPool, **kwargs: Any) -> None:
            pool_init(self, **(kwargs | {"max_idle": int(idle)}))

        upstream.UpstreamPool.__init__ = with_idle  # type: ignore[method-assign]
        applied.append(f"upstream idle pool {idle}")
    trim = os.environ.get("MTLS_BENCH_TRIM")
    if trim is not None:
        _start_trim(float(trim))
        applied.append(f"malloc_trim every {trim} s")
    stats = os.environ.get("MTLS_BENCH_STATS")
    if stats is not None:
        _start_stats(stats)
        applied.append(f"stats to {stats}")
    return applied


def main() -> int:
    applied = apply()
    print(f"bench/variants.py: {', '.join(applied) or 'no change'}", file=sys.stderr, flush=True)
    from gateway.cli.main import main as gateway_main

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
