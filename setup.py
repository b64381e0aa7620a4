"""Build: pure Python by default, or the data plane compiled to C with mypyc.

    COMPILE_MTLS_GATEWAY=1 pip install --no-build-isolation --no-deps .

compiles ``COMPILED`` below, the modules every proxied request runs through,
with mypyc (the compiler mypy and black ship with).  The code stays plain,
``mypy --strict`` Python; mypyc turns calls between these modules into C
calls and attribute reads into struct reads.  It measured about a fifth fewer
instructions per keep-alive request (bench/RESULTS.md, "session 7").

Why opt-in:

* mypyc type-checks the modules against the installed dependencies, so it
  needs them (and mypy, pinned in requirements.lock) in the same environment:
  hence ``--no-build-isolation`` after installing the lock;
* an editable install would put the compiled modules beside the sources, and
  an edited ``.py`` would be shadowed by its stale ``.so``.

(The variable is outside the gateway's ``MTLS_GATEWAY_*`` configuration
overrides, which a running gateway would refuse as an unknown key.)

Each extension is optional: on a machine without a C compiler or Python's
headers the build warns and installs the pure modules, which behave the same
(tests/test_compiled.py runs the data-plane tests on both).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

# The request path, in the order a keep-alive request meets it.  Not in the
# list: anything subclassed outside it (mypyc classes cannot have interpreted
# subclasses), and anything not run per request.
COMPILED = [
    "gateway/listener/records.py",
    "gateway/listener/tls_protocol.py",
    "gateway/listener/tls_transport.py",
    "gateway/timer.py",
    "gateway/http1/connections.py",
    "gateway/http1/head.py",
    "gateway/http1/reader.py",
    "gateway/http1/server.py",
    "gateway/http1/writer.py",
    "gateway/pipeline/chain.py",
    "gateway/pipeline/endpoints.py",
    "gateway/pipeline/facts.py",
    "gateway/pipeline/messages.py",
    "gateway/pipeline/target.py",
    "gateway/framing.py",
    "gateway/headers.py",
    "gateway/proxy/exchange.py",
    "gateway/proxy/forward.py",
    "gateway/proxy/routes.py",
    "gateway/proxy/stages.py",
    "gateway/upstream/connection.py",
    "gateway/upstream/head.py",
    "gateway/upstream/names.py",
    "gateway/upstream/pool.py",
    "gateway/ops/latency.py",
    "gateway/ops/observability.py",
    "gateway/ops/metrics.py",
    "gateway/auth/outcome.py",
    "gateway/auth/recent.py",
    "gateway/auth/authenticator.py",
    "gateway/websocket/handshake.py",
]


def compiled_extensions() -> list[Extension]:
    if os.environ.get("COMPILE_MTLS_GATEWAY", "").lower() not in {"1", "true", "yes"}:
        return []
    from mypyc.build import mypycify  # the lock's mypy: only needed for this build

    extensions: list[Extension] = mypycify(COMPILED, opt_level="3")
    for extension in extensions:
        extension.optional = True  # no compiler: the pure modules, with a warning
    return extensions


setup(ext_modules=compiled_extensions())
