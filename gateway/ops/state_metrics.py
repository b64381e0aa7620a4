"""Metrics read at scrape time from the running parts: reloads, expiry dates, registry state.

Every worker reads the same files and registry, so the worker answering a
scrape speaks for all of them here; counters that differ per worker
(handshakes, connections, cache hits) are in gateway.ops.worker_metrics.

These are facts the components already keep (counters on the TLS listeners,
the registry and the token service; the certificates in force), so nothing
is added to the request path to publish them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.listener.tls_material import load_pem_certificates
from gateway.trust.dn import format_name

if TYPE_CHECKING:
    from gateway.app import Gateway


class GatewayStateCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        # listener index -> (notAfter in force, its subject): the file is read
        # again only when a reload changed the certificate.
        self._server_subjects: dict[int, tuple[dt.datetime, str]] = {}

    def _server_subject(self, index: int, path: Path, not_after: dt.datetime) -> str:
        cached = self._server_subjects.get(index)
        if cached is not None and cached[0] == not_after:
            return cached[1]
        subject = "unknown"
        try:
            leaf = load_pem_certificates(path)[0]
        except (OSError, ValueError, IndexError):
            leaf = None
        # The file may already hold the next certificate, not yet loaded.
        if leaf is not None and leaf.not_valid_after_utc == not_after:
            subject = format_name(leaf.subject)
            self._server_subjects[index] = (not_after, subject)
        return subject

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

        reloads = CounterMetricFamily(
            "mtls_gateway_reloads",
            "Reloads of watched files by component and outcome (a failure keeps the running state).",
            labels=["component", "outcome"],
        )
        for part in gateway.watcher.parts:
            reloads.add_metric([part.name, "ok"], float(part.reloads_ok))
            reloads.add_metric([part.name, "failed"], float(part.reload_failures))
        yield reloads

        expiry = GaugeMetricFamily(
            "mtls_gateway_certificate_expiry_timestamp_seconds",
            "notAfter of the server certificate and of each client CA, as a Unix time "
            "(subject: the CA's DN with admin.metrics_client_labels, else sha256:<fingerprint>).",
            labels=["listener", "kind", "subject"],
        )
        for listener in gateway.listeners:
            material = listener.tls.material
            label = str(listener.index)
            not_after = material.server_not_after
            subject = self._server_subject(listener.index, listener.config.tls.cert, not_after)
            expiry.add_metric([label, "server", subject], not_after.timestamp())
            for ca in material.trust.ca_certificates:
                expiry.add_metric(
                    [label, "client_ca", self._ca_label(ca)], ca.not_valid_after_utc.timestamp()
                )
        yield expiry
