"""Run ``mtls-gateway`` with what-if changes applied at start, to size a change before making it.

Nothing in gateway/ is modified: each switch patches a library default in this
process only, then hands over to ``gateway.cli.main``.  Used by RESULTS.md's
"expected win" figures:

    MTLS_BENCH_TICKETS=1   every SSLContext sends this many TLS 1.3 session tickets
                           (OpenSSL's default is 2)
    MTLS_BENCH_COALESCE=1  aiohttp StreamResponse sends its headers with the first
                           body write instead of in a write of their own
    MTLS_BENCH_GC=1        gc.freeze() after imports and a gen-0 threshold of 50,000

    python3 bench/compare.py --only gateway --gateway-command \
        "env MTLS_BENCH_TICKETS=1 python3 bench/variants.py"
"""

from __future__ import annotations

import gc
import importlib
import os
import ssl
import sys
from typing import Any


def apply() -> list[str]:
    applied: list[str] = []
    tickets = os.environ.get("MTLS_BENCH_TICKETS")
    if tickets is not None:
        load_cert_chain = ssl.SSLContext.load_cert_chain

        def with_tickets(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
            if self.protocol == ssl.PROTOCOL_TLS_SERVER:
                self.num_tickets = int(tickets)
            load_cert_chain(self, *args, **kwargs)

        ssl.SSLContext.load_cert_chain = with_tickets  # type: ignore[method-assign]
        applied.append(f"num_tickets={tickets}")
    if os.environ.get("MTLS_BENCH_COALESCE") == "1":
        from aiohttp import web

        web.StreamResponse._send_headers_immediately = False
        applied.append("coalesced response headers")
    if os.environ.get("MTLS_BENCH_GC") == "1":
        for module in ("aiohttp.web", "gateway.app", "gateway.server", "gateway.supervisor"):
            importlib.import_module(module)  # imported now, so that freeze() covers them
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 50)
        applied.append("gc.freeze + threshold 50000")
    return applied


def main() -> int:
    applied = apply()
    print(f"bench/variants.py: {', '.join(applied) or 'no change'}", file=sys.stderr, flush=True)
    from gateway.cli import main as gateway_main

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
