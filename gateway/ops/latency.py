"""The upstream latency histogram, counted in plain numbers on the request path.

prometheus-client's ``Histogram.observe`` takes a lock twice and walks the
bucket bounds in Python: 2.5 % of a keep-alive request's instructions
(bench/RESULTS.md, session 6).  In one process the counts live in plain
lists that a collector turns into the same series at scrape time.  With
``serve --workers N`` (prometheus-client's multiprocess mode) the samples
must go through prometheus-client's shared files, so there every
observation still goes to a ``Histogram``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

NAME = "mtls_gateway_upstream_latency_seconds"
HELP = "Time from sending a request upstream to its response head."


class UpstreamLatency:
    """``mtls_gateway_upstream_latency_seconds{route}``: observe on the request path, read at scrape."""

    def __init__(
        self, registry: CollectorRegistry, buckets: Sequence[float], *, multiprocess: bool
    ) -> None:
        self._bounds = tuple(float(bound) for bound in buckets)
        # The "le" values exactly as prometheus-client's Histogram writes them.
        self._labels: list[str] = [
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in (*self._bounds, math.inf)
        ]
        # Per route: one count per bucket (the last is +Inf), then the sum.
        self._counts: dict[str, list[float]] = {}
        self._histogram: Histogram | None = None
        self._children: dict[str, Histogram] = {}
        if multiprocess:
            self._histogram = Histogram(NAME, HELP, ["route"], buckets=buckets, registry=registry)
        else:
            registry.register(self)

    def observe(self, route: str, seconds: float) -> None:
        if self._histogram is not None:
            child = self._children.get(route)
            if child is None:
                # labels() takes a lock and builds a key per call: keep the children.
                child = self._children[route] = self._histogram.labels(route)
            child.observe(seconds)
            return
        counts = self._counts.get(route)
        if counts is None:
            counts = self._counts[route] = [0.0] * (len(self._bounds) + 2)
        # The first bound >= seconds: Prometheus buckets count "le" (less or equal).
        counts[bisect_left(self._bounds, seconds)] += 1
        counts[-1] += seconds

    # -- prometheus-client's Collector protocol (one process) ---------------------

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(NAME, HELP, labels=["route"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(NAME, HELP, labels=["route"])
        for route, counts in self._counts.items():
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for label, count in zip(self._labels, counts[:-1], strict=True):
                cumulative += count
                buckets.append((label, cumulative))
            family.add_metric([route], buckets, sum_value=counts[-1])
        yield family
