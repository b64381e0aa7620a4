"""Build: the data plane compiled to C with mypyc where it can be, pure Python otherwise.

The build backend (build_backend/compiled_by_default.py) decides: a wheel
(``pip install .``) is compiled where a C compiler and Python's headers are
present, with the dependencies and mypy at requirements.lock's versions in
its build environment; an editable install stays pure.  It tells this file
through ``COMPILE_MTLS_GATEWAY``:

* ``auto`` (a wheel, by default): compile ``COMPILED`` below; if mypyc or the
  C compiler fails, warn and install the pure modules;
* ``1``: compile, and fail the build if that fails (the Docker image, and
  ``setup.py build_ext --inplace`` in tests/test_compiled.py);
* unset or ``0``: the pure modules.

``COMPILED`` lists the modules every proxied request runs through.  The code
stays plain, ``mypy --strict`` Python; mypyc turns calls between these modules
into C calls and attribute reads into struct reads: about a third fewer
instructions per keep-alive request (bench/RESULTS.md, "session 8").

(The variable is outside the gateway's ``MTLS_GATEWAY_*`` configuration
overrides, which a running gateway would refuse as an unknown key.)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

# The request path, in the order a keep-alive request meets it.  Not in the
# list: anything subclassed outside it (mypyc classes cannot have interpreted
# subclasses), and anything not run per request.
COMPILED = [
    "gateway/listener/records.py",
    "gateway/listener/bio.py",
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


def _choice() -> str:
    return os.environ.get("COMPILE_MTLS_GATEWAY", "").strip().lower()


def _required() -> bool:
    return _choice() in {"1", "true", "yes"}


def _pure_instead(failed: BaseException) -> None:
    warnings.warn(
        f"mtls-gateway: the data plane is not compiled ({failed}); installing the pure modules",
        stacklevel=2,
    )


def compiled_extensions() -> list[Extension]:
    if not _required() and _choice() != "auto":
        return []
    try:
        from mypyc.build import mypycify  # the lock's mypy: only needed for this build

        extensions: list[Extension] = mypycify(COMPILED, opt_level="3")
    except (SystemExit, Exception) as failed:  # no mypy, or mypyc exits on a type error
        if _required():
            raise
        _pure_instead(failed)
        return []
    return extensions


class AllOrNothing(build_ext):
    """Every extension, or none: the modules share one mypyc runtime library.

    setuptools' ``optional`` extensions fail one by one, which could leave a
    module whose shared library failed, and an install that cannot import.
    """

    def run(self) -> None:
        try:
            super().run()
        except (BaseError, CCompilerError) as failed:
            if _required():
                raise
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            self.extensions = list[Extension]()
            self.distribution.ext_modules = []
            _pure_instead(failed)


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": AllOrNothing})
