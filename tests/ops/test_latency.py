"""gateway.ops.latency: the upstream latency histogram in plain numbers, as Prometheus reads it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.ops.latency import HELP, NAME, UpstreamLatency
from gateway.ops.metrics import LATENCY_BUCKETS

# On a bound, between bounds, below the first and past the last one.
OBSERVED = [
    ("/", 0.0005),
    ("/", 0.0007),
    ("/", 0.0),
    ("/", 1.0),
    ("/", 31.0),
    ("/api", 0.003),
    ("/api", 0.003),
]


def test_the_exposition_is_the_one_prometheus_client_writes() -> None:
    ours_registry = CollectorRegistry(auto_describe=True)
    ours = UpstreamLatency(ours_registry, LATENCY_BUCKETS, multiprocess=False)
    theirs_registry = CollectorRegistry(auto_describe=True)
    theirs = Histogram(NAME, HELP, ["route"], buckets=LATENCY_BUCKETS, registry=theirs_registry)
    for route, seconds in OBSERVED:
        ours.observe(route, seconds)
        theirs.labels(route).observe(seconds)
    # disable_created_metrics() (gateway.ops.metrics) keeps *_created out of both.
    assert generate_latest(ours_registry) == generate_latest(theirs_registry)


def test_counts_are_cumulative_and_a_bound_counts_in_its_own_bucket() -> None:
    registry = CollectorRegistry()
    latency = UpstreamLatency(registry, (0.1, 1.0), multiprocess=False)
    for seconds in (0.1, 0.5, 2.0):
        latency.observe("/", seconds)
    sample = registry.get_sample_value
    assert sample(f"{NAME}_bucket", {"route": "/", "le": "0.1"}) == 1
    assert sample(f"{NAME}_bucket", {"route": "/", "le": "1.0"}) == 2
    assert sample(f"{NAME}_bucket", {"route": "/", "le": "+Inf"}) == 3
    assert sample(f"{NAME}_count", {"route": "/"}) == 3
    assert sample(f"{NAME}_sum", {"route": "/"}) == pytest.approx(2.6)


def test_in_multiprocess_mode_observations_go_to_a_prometheus_client_histogram() -> None:
    # serve --workers N: only prometheus-client's own values reach the shared
    # files that /metrics sums over workers, so there it is its Histogram.
    registry = CollectorRegistry()
    latency = UpstreamLatency(registry, LATENCY_BUCKETS, multiprocess=True)
    latency.observe("/", 0.002)
    latency.observe("/", 0.002)
    collected = {family.type for family in registry.collect()}
    assert collected == {"histogram"}
    assert registry.get_sample_value(f"{NAME}_count", {"route": "/"}) == 2
