"""Metrics read at scrape time from the running parts: reloads, expiry dates, registry state.

These are facts the components already keep (counters on the TLS listeners,
the registry and the token service; the certificates in force), so nothing
is added to the request path to publish them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.dn import format_name

if TYPE_CHECKING:
    from gateway.app import Gateway


class GatewayStateCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def _ca_label(self, ca: x509.Certificate) -> str:
        # The subject names the PKI; without admin.metrics_client_labels a
        # fingerprint still tells the CAs apart (openssl x509 -fingerprint -sha256).
        if self._gateway.metrics.client_labels:
            return format_name(ca.subject)
        return "sha256:" + ca.fingerprint(hashes.SHA256()).hex()[:16]

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway
        registry = gateway.registry
        up = GaugeMetricFamily(
            "mtls_gateway_registry_up",
            "1 while the registry backend answers, 0 while it is unreachable.",
            labels=["registry"],
        )
        up.add_metric([registry.description], 1.0 if registry.ready else 0.0)
        yield up

        cache = CounterMetricFamily(
            "mtls_gateway_registry_cache",
            "Registry cache lookups by result (Redis registry; the YAML registry is all in memory).",
            labels=["result"],
        )
        cache.add_metric(["hit"], float(getattr(registry, "cache_hits", 0)))
        cache.add_metric(["miss"], float(getattr(registry, "cache_misses", 0)))
        yield cache

        reloads = CounterMetricFamily(
            "mtls_gateway_reloads",
            "Reloads of watched files by component and outcome (a failure keeps the running state).",
            labels=["component", "outcome"],
        )
        parts: list[tuple[str, object]] = [
            (f"tls:listeners[{ls.index}]", ls.tls) for ls in gateway.listeners
        ]
        parts.append(("registry", registry))
        parts += [(name, part) for name, part in gateway.reload_parts]
        for name, part in parts:
            if hasattr(part, "reloads_ok"):
                reloads.add_metric([name, "ok"], float(getattr(part, "reloads_ok", 0)))
                reloads.add_metric([name, "failed"], float(getattr(part, "reload_failures", 0)))
        yield reloads

        handshakes = CounterMetricFamily(
            "mtls_gateway_tls_handshakes",
            "TLS handshakes started (connection accepted) and completed. "
            "started - completed: failed or in progress; "
            "mtls_gateway_tls_handshake_failures_total says why.",
            labels=["listener", "outcome"],
        )
        open_connections = GaugeMetricFamily(
            "mtls_gateway_connections_open", "Open client connections.", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "mtls_gateway_connections_refused",
            "Connections closed at once because limits.max_connections was reached.",
            labels=["listener"],
        )
        for listener in gateway.listeners:
            label = str(listener.index)
            handshakes.add_metric([label, "started"], float(listener.tls.handshakes.started))
            handshakes.add_metric([label, "completed"], float(listener.tls.handshakes.completed))
            limit = listener.connections
            if limit is not None:
                open_connections.add_metric([label], float(limit.open))
                refused.add_metric([label], float(limit.refused))
        yield handshakes
        yield open_connections
        yield refused

        expiry = GaugeMetricFamily(
            "mtls_gateway_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate and of each client CA, as a Unix time "
            "(subject: the CA's DN with admin.metrics_client_labels, else sha256:<fingerprint>).",
            labels=["listener", "kind", "subject"],
        )
        for listener in gateway.listeners:
            material = listener.tls.material
            label = str(listener.index)
            expiry.add_metric([label, "server", ""], material.server_not_after.timestamp())
            for ca in material.trust.ca_certificates:
                expiry.add_metric(
                    [label, "client_ca", self._ca_label(ca)], ca.not_valid_after_utc.timestamp()
                )
        yield expiry
