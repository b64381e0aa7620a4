"""Prometheus metrics, served on the admin listener at ``/metrics``.

One registry per process.  With ``serve --workers N`` each worker writes its
samples to a shared directory (prometheus-client's multiprocess mode, enabled
by the supervisor through PROMETHEUS_MULTIPROC_DIR) and any worker answering
``/metrics`` reports the sum over all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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


def method_class(method: str) -> str:
    """Bounded label: safe (read-only) vs unsafe methods, WebSocket upgrades apart."""
    return "read" if method in ("GET", "HEAD", "OPTIONS") else "write"


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    upstream_latency: Histogram
    auth_refusals: Counter
    tls_handshake_failures: Counter
    tokens: Counter
    registry_lookups: Counter
    in_flight: Gauge

    state: list[Collector] = field(default_factory=list)
    # admin.metrics_client_labels: client ids and CA subjects as label values.
    # Off (the default), the admin port names no client and no CA: client_id
    # is "" and a CA is its SHA-256 fingerprint (state_metrics.py).
    client_labels: bool = False

    def add_state(self, collector: Collector) -> None:
        """A collector read at scrape time (reload counts, expiry dates, Redis state)."""
        self.state.append(collector)
        self.registry.register(collector)

    def render(self) -> bytes:
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
    return Metrics(
        client_labels=client_labels,
        registry=registry,
        requests=Counter(
            "mtls_gateway_requests",
            "Requests answered, by listener, route prefix, method class and status.",
            ["listener", "route", "method", "status"],
            registry=registry,
        ),
        upstream_latency=Histogram(
            "mtls_gateway_upstream_latency_seconds",
            "Time from sending a request upstream to its response head.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
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


__all__ = ["CONTENT_TYPE", "Metrics", "create_metrics", "method_class"]
