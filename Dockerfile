# syntax=docker/dockerfile:1
#
# mtls-gateway container image.
#
#   docker build -t mtls-gateway:0.1.0 .
#   mtls-gateway quickstart --no-serve      # a config, dev PKI and key in ./gateway-demo
#   docker run --rm -p 8443:8443 --read-only --tmpfs /tmp \
#     --user "$(id -u):$(id -g)" \
#     -v "$PWD/gateway-demo:/etc/mtls-gateway:ro" \
#     -e MTLS_GATEWAY_LISTENERS__0__BIND=0.0.0.0:8443 \
#     -e MTLS_GATEWAY_ADMIN__BIND=0.0.0.0:9901 \
#     mtls-gateway:0.1.0
#   (--user: the quickstart's key and PKI directories are private to you.)
#
# Two stages: the builder turns pyproject.toml + setup.py + build_backend/ +
# gateway/ into # wheels: the project's, with its data plane compiled by mypyc (setup.py,
# COMPILE_MTLS_GATEWAY=1), and one per dependency at the version and hash
# requirements.lock pins; the runtime stage installs those wheels
# from a bind mount (--no-index: nothing else is fetched, no wheel stays in a
# layer) on python:3.11-slim and runs as UID/GID 10001.  The process writes
# nothing to disk (bytecode is compiled at install time), so the image runs
# with a read-only root filesystem; give it a writable /tmp (emptyDir) for
# PROMETHEUS_MULTIPROC_DIR with `serve --workers N`.
#
# Needs BuildKit (the default builder since Docker 23) for RUN --mount.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for mypyc's output (the image's Python has its headers).  Not
# pinned: Debian's stable gcc, in the builder only.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the wheels are built from (.dockerignore keeps the rest out anyway).
COPY pyproject.toml README.md setup.py requirements.lock ./
COPY build_backend ./build_backend
COPY gateway ./gateway
# mypyc type-checks the data plane against the installed dependencies, so the
# lock goes in first (mypy is in it); then the project's wheel, compiled; then
# a wheel of every locked dependency, which the runtime stage installs from.
RUN python -m pip install --no-cache-dir --require-hashes -r requirements.lock \
 && COMPILE_MTLS_GATEWAY=1 python -m pip wheel --no-cache-dir --no-build-isolation \
        --no-deps --wheel-dir /wheels . \
 && python -m pip wheel --no-cache-dir --require-hashes --no-deps --wheel-dir /wheels \
        -r requirements.lock

# --------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mtls-gateway" \
      org.opencontainers.image.description="Mutual-TLS authentication gateway for legacy HTTP APIs: client-certificate auth, certificate-bound OAuth tokens, identity headers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed, numeric, non-root identity: Kubernetes' runAsNonRoot can verify it
# and runAsUser/fsGroup in deploy/k8s use the same numbers.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway

# Install from the builder's wheels only; pip compiles the bytecode now, so
# nothing is written at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels/mtls_gateway-*.whl \
 && mtls-gateway --version \
 && python -c "import gateway.http1.server as m, sys; sys.exit(not m.__file__.endswith('.so'))"

# jemalloc serves the Python heap (PYTHONMALLOC=malloc sends every object
# to it).  After a burst of thousands of callers its background thread hands
# the freed pages back within seconds; pymalloc keeps each 1 MiB arena while
# any block in it lives, and a few long-lived ones land in every arena a
# burst makes.  Measured (bench/RESULTS.md, session 9), RSS 60 s after 16
# bursts of 2,000 callers: +6.8 % of its baseline for this compiled build,
# against +39 to +52 % on pymalloc, for 2 % more instructions per keep-alive
# request.  Linked to one path whatever the multiarch directory.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libjemalloc2 \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/lib/*/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    PYTHONMALLOC=malloc \
    MALLOC_CONF=background_thread:true

# Config, certificates, keys and registry are mounted here
# (serve --config /etc/mtls-gateway/gateway.yaml; paths inside are relative to it).
WORKDIR /etc/mtls-gateway

USER 10001:10001

# 8443: TLS listener.  9901: admin (plain HTTP: /healthz, /readyz, /metrics);
# bind it to 0.0.0.0:9901 in the config (or MTLS_GATEWAY_ADMIN__BIND) to
# reach it from outside the container.
EXPOSE 8443 9901

# No curl in the slim image: the healthcheck is Python's urllib against the
# admin listener.  HEALTHCHECK_URL overrides the target (e.g. another port).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:9901/healthz'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]

# SIGTERM: /readyz fails, in-flight requests finish, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mtls-gateway"]
CMD ["serve", "--config", "/etc/mtls-gateway/gateway.yaml"]
