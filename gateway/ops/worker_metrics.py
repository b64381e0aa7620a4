"""Per-worker facts that /metrics must sum (or label) across ``serve --workers N``.

The TLS listeners, the connection limits and the Redis cache keep plain
integer counters (no metrics call on their hot paths).  Read at scrape time,
they described only the worker that answered the scrape.  ``CountersInMetrics``
copies them into prometheus-client metrics, which in multiprocess mode live in
the shared directory, so any worker's answer is the sum over all of them: the
worker answering syncs at once, the others within ``SYNC_SECONDS``.

``WorkersProcessCollector`` reports ``process_*`` for every live worker,
labelled ``pid``: CPU seconds or resident memory summed over processes would
hide which one is in trouble.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.app import Gateway

SYNC_SECONDS = 1.0


class CountersInMetrics:
    """Copies the components' integer counters into (multiprocess-aware) metrics."""

    def __init__(self, gateway: Gateway, registry: CollectorRegistry, *, multiproc: bool) -> None:
        self._gateway = gateway
        self._published: dict[tuple[str, ...], float] = {}
        self.handshakes = Counter(
            "mtls_gateway_tls_handshakes",
            "TLS handshakes started (connection accepted) and completed. "
            "started - completed: failed or in progress; "
            "mtls_gateway_tls_handshake_failures_total says why.",
            ["listener", "outcome"],
            registry=registry,
        )
        self.refused = Counter(
            "mtls_gateway_connections_refused",
            "Connections closed at once because limits.max_connections was reached.",
            ["listener"],
            registry=registry,
        )
        self.cache = Counter(
            "mtls_gateway_registry_cache",
            "Registry cache lookups by result (Redis registry; the YAML registry is all in memory).",
            ["result"],
            registry=registry,
        )
        self.open = Gauge(
            "mtls_gateway_connections_open",
            "Open client connections.",
            ["listener"],
            registry=registry,
            # livesum: a worker that died no longer holds connections.
            **({"multiprocess_mode": "livesum"} if multiproc else {}),  # type: ignore[arg-type]
        )
        # Every series exists from the start, at 0, as the collector's did.
        self.sync()

    def _advance(self, counter: Counter, labels: tuple[str, ...], current: float) -> None:
        key = (str(id(counter)), *labels)
        delta = current - self._published.get(key, 0.0)
        child = counter.labels(*labels)
        if delta > 0:
            child.inc(delta)
        # A component replaced by a reload starts again at 0: publish from there.
        self._published[key] = current

    def sync(self) -> None:
        gateway = self._gateway
        registry = gateway.registry
        self._advance(self.cache, ("hit",), float(getattr(registry, "cache_hits", 0)))
        self._advance(self.cache, ("miss",), float(getattr(registry, "cache_misses", 0)))
        for listener in gateway.listeners:
            label = str(listener.index)
            stats = listener.tls.handshakes
            self._advance(self.handshakes, (label, "started"), float(stats.started))
            self._advance(self.handshakes, (label, "completed"), float(stats.completed))
            limit = listener.connections
            if limit is not None:
                self._advance(self.refused, (label,), float(limit.refused))
                self.open.labels(label).set(float(limit.open))


_DB_FILE = re.compile(r"_(\d+)\.db$")


class WorkersProcessCollector(Collector):
    """``process_*`` of every worker whose metric files are in the shared directory."""

    def __init__(self, directory: str, proc: str = "/proc") -> None:
        self._directory = directory
        self._proc = proc

    def _live_pids(self) -> list[int]:
        pids: set[int] = set()
        try:
            names = os.listdir(self._directory)
        except OSError:
            names = []
        for name in names:
            # gauge_livesum_<pid>.db exists while the worker lives; the
            # supervisor removes it (mark_process_dead) when it exits.
            if name.startswith("gauge_livesum_"):
                found = _DB_FILE.search(name)
                if found:
                    pids.add(int(found.group(1)))
        pids.add(os.getpid())
        return sorted(pid for pid in pids if os.path.exists(os.path.join(self._proc, str(pid))))

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self._live_pids():
            reader = _process_reader(pid, self._proc)
            for family in reader.collect():
                labelled = families.get(family.name)
                if labelled is None:
                    labelled = families[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    labelled.add_sample(sample.name, {"pid": str(pid)}, sample.value)
        yield from families.values()


def _process_reader(pid: int, proc: str) -> ProcessCollector:
    read_pid: Callable[[], int] = lambda: pid  # noqa: E731 - ProcessCollector wants a callable
    return ProcessCollector(pid=read_pid, proc=proc, registry=None)
