"""Prometheus metrics, served on the admin listener at ``/metrics``.

One registry per process.  With ``serve --workers N`` each worker writes its
samples to a shared directory (prometheus-client's multiprocess mode, enabled
by the supervisor through PROMETHEUS_MULTIPROC_DIR) and any worker answering
``/metrics`` reports the sum over all of them.  Counters the components keep
as plain integers (handshakes, connections, cache hits) are copied into
prometheus-client metrics by gateway.ops.worker_metrics, so they are summed too.

No ``*_created`` series: they double the series count and nothing reads
them (prometheus-client's ``disable_created_metrics``).  ``process_*``
metrics come from prometheus-client's ProcessCollector, one set per worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

from gateway.ops.latency import UpstreamLatency

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

disable_created_metrics()  # type: ignore[no-untyped-call]

# Upstream latencies from sub-millisecond loopback to slow legacy backends.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


# RFC 9110 §9 and PATCH (RFC 5789): any other token is one "other" label, so a
# caller cannot grow the series count by inventing methods.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def method_label(method: str) -> str:
    """The request's HTTP method, or ``other`` for one outside RFC 9110 and PATCH."""
    return method if method in KNOWN_METHODS else "other"


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    upstream_latency: UpstreamLatency
    auth_refusals: Counter
    tls_handshake_failures: Counter
    tokens: Counter
    registry_lookups: Counter
    in_flight: Gauge
    http2_requests: Counter

    state: list[Collector] = field(default_factory=list)
    # admin.metrics_client_labels: client ids and CA subjects as label values.
    # Off (the default), the admin port names no client and no CA: client_id
    # is "" and a CA is its SHA-256 fingerprint (state_metrics.py).
    client_labels: bool = False
    # Called before each scrape (and each second in workers): copy plain counters in.
    syncs: list[Callable[[], None]] = field(default_factory=list)
    # Requests in flight, kept as plain integers by each listener's Observer
    # (gateway/ops/observability.py); their sum is the gauge, set at sync.
    in_flight_sources: list[Callable[[], int]] = field(default_factory=list)

    def add_state(self, collector: Collector) -> None:
        """A collector read at scrape time (reload counts, expiry dates, Redis state)."""
        self.state.append(collector)
        self.registry.register(collector)

    def sync(self) -> None:
        for sync in self.syncs:
            sync()
        if self.in_flight_sources:
            self.in_flight.set(sum(source() for source in self.in_flight_sources))

    def render(self) -> bytes:
        self.sync()
        if os.environ.get(MULTIPROC_ENV):
            # Counters and histograms summed over every worker; state read from
            # the worker answering (it is the same files and Redis for all).
            collected = CollectorRegistry()
            multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
            for collector in self.state:
                collected.register(collector)
            return generate_latest(collected)
        return generate_latest(self.registry)


def create_metrics(*, client_labels: bool = False) -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    multiproc = bool(os.environ.get(MULTIPROC_ENV))
    metrics = Metrics(
        client_labels=client_labels,
        registry=registry,
        http2_requests=Counter(
            "mtls_gateway_http2_requests",
            "HTTP/2 requests answered (also counted in mtls_gateway_requests_total), by "
            'listener, route prefix and gRPC status ("" when the request was not gRPC).',
            ["listener", "route", "grpc_status"],
            registry=registry,
        ),
        requests=Counter(
            "mtls_gateway_requests",
            "Requests answered, by listener, route prefix, HTTP method and status.",
            ["listener", "route", "method", "status"],
            registry=registry,
        ),
        upstream_latency=UpstreamLatency(registry, LATENCY_BUCKETS, multiprocess=multiproc),
        auth_refusals=Counter(
            "mtls_gateway_auth_refusals",
            "Refused authentications by reason class.",
            ["reason"],
            registry=registry,
        ),
        tls_handshake_failures=Counter(
            "mtls_gateway_tls_handshake_failures",
            "TLS handshakes that failed, by OpenSSL reason.",
            ["reason"],
            registry=registry,
        ),
        tokens=Counter(
            "mtls_gateway_tokens",
            "Token requests by client (with admin.metrics_client_labels) and outcome "
            "(issued or the OAuth error code).",
            ["client_id", "outcome"],
            registry=registry,
        ),
        registry_lookups=Counter(
            "mtls_gateway_registry_lookups",
            "Registry lookups by result (match, no_match, unavailable).",
            ["result"],
            registry=registry,
        ),
        in_flight=Gauge(
            "mtls_gateway_requests_in_flight",
            "Requests being handled now.",
            registry=registry,
            **({"multiprocess_mode": "livesum"} if multiproc else {}),  # type: ignore[arg-type]
        ),
    )
    if multiproc:
        from gateway.ops.worker_metrics import WorkersProcessCollector

        metrics.add_state(WorkersProcessCollector(os.environ[MULTIPROC_ENV]))
    else:
        ProcessCollector(registry=registry)
    return metrics


__all__ = ["CONTENT_TYPE", "Metrics", "create_metrics", "method_label"]
