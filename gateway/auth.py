"""Who is on this TLS connection: certificate → identity → registered client.

The peer certificate is fixed for the life of a connection (TLS-NOTES), so the
result is cached per connection and recomputed only when the registry or the
trust material has changed since: a client removed from the registry, or a
pin removed from the trust store, is refused on its next request even on a
keep-alive connection.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
import weakref
from dataclasses import dataclass

from aiohttp import web

from gateway.config import HeaderNames
from gateway.errors import (
    GatewayError,
    access_denied,
    client_certificate_required,
    registry_unavailable,
)
from gateway.headers import identity_headers
from gateway.identity import CertificateError, CertificateIdentity, cached_identity_from_der
from gateway.metrics import Metrics
from gateway.registry.base import Registry, RegistryUnavailable
from gateway.registry.matching import MatchResult
from gateway.registry.model import Client
from gateway.tls import ListenerTls

log = logging.getLogger("gateway.auth")


@dataclass(frozen=True, slots=True)
class ConnectionAuth:
    """The outcome for one connection at one registry and trust generation."""

    identity: CertificateIdentity | None
    result: MatchResult
    headers: tuple[tuple[str, str], ...]  # identity headers for this client
    registry_generation: int
    trust_generation: int
    # The certificate's notAfter: a keep-alive connection outliving its
    # certificate is re-checked (and refused) instead of served from cache.
    valid_until: float = float("inf")

    @property
    def client(self) -> Client | None:
        return self.result.client

    def require_client(self) -> Client:
        """The single registered client, or the error to answer with (fail closed)."""
        if self.identity is None:
            raise client_certificate_required()
        client = self.result.client
        if client is None:
            raise access_denied()
        return client


_NO_MATCH = MatchResult((), "no client certificate presented")


class Authenticator:
    """Resolves and caches the identity of each connection on one listener."""

    def __init__(
        self,
        registry: Registry,
        tls: ListenerTls,
        header_names: HeaderNames,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._registry = registry
        self._tls = tls
        self._names = header_names
        self._cache: weakref.WeakKeyDictionary[object, ConnectionAuth] = weakref.WeakKeyDictionary()

    async def authenticate(self, request: web.Request) -> ConnectionAuth:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:  # connection already closing
            raise client_certificate_required()
        cached = self._cache.get(ssl_object)
        trust = self._tls.trust
        if (
            cached is not None
            and cached.registry_generation == self._registry.generation
            and cached.trust_generation == trust.generation
            and time.time() < cached.valid_until
        ):
            return cached
        auth = await self._resolve(request, ssl_object)
        self._cache[ssl_object] = auth
        return auth

    async def _resolve(self, request: web.Request, ssl_object: ssl.SSLObject) -> ConnectionAuth:
        registry_generation = self._registry.generation
        trust = self._tls.trust
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return ConnectionAuth(None, _NO_MATCH, (), registry_generation, trust.generation)
        try:
            identity = cached_identity_from_der(der)
        except CertificateError as exc:
            self._refuse(request, None, str(exc), "unparseable")
            raise access_denied("the client certificate could not be parsed") from None
        if identity.is_ca:
            # A CA certificate presented as a client identity: never a client (RFC 5280 §4.2.1.9).
            self._refuse(request, identity, "certificate can issue certificates", "ca_certificate")
            raise access_denied()
        if ssl_object.session_reused and not trust.accepts(identity):
            # Resumed sessions skip the current trust store (TLS-NOTES).
            self._refuse(
                request,
                identity,
                "resumed session no longer trusted by current trust material",
                "resumed_untrusted",
            )
            raise access_denied()
        if not identity.valid_at(dt.datetime.now(dt.UTC)):
            # Checked at the handshake; seen here when a connection outlives it.
            self._refuse(request, identity, "certificate expired", "expired")
            raise access_denied("the client certificate has expired")
        if trust.is_revoked(identity):
            self._refuse(request, identity, "certificate revoked (CRL)", "revoked")
            raise access_denied("the client certificate has been revoked")
        try:
            result = await self._registry.match(identity, pinned=trust.is_pinned(identity))
        except RegistryUnavailable:
            self._count_lookup("unavailable")
            self._refuse(request, identity, "registry unavailable", "registry_unavailable")
            raise registry_unavailable() from None
        self._count_lookup("match" if result.client is not None else "no_match")
        if result.client is None:
            reason, kind = result.reason, "no_match"
            if result.matches:
                ids = sorted({m.client.client_id for m in result.matches})
                reason, kind = f"certificate matches several clients: {', '.join(ids)}", "ambiguous"
            self._refuse(request, identity, reason, kind)
        client_id = result.client.client_id if result.client is not None else None
        headers = identity_headers(self._names, client_id, identity)
        return ConnectionAuth(
            identity,
            result,
            headers,
            registry_generation,
            trust.generation,
            identity.not_after.timestamp(),
        )

    def _count_lookup(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.registry_lookups.labels(result).inc()

    def _refuse(
        self,
        request: web.Request,
        identity: CertificateIdentity | None,
        reason: str,
        kind: str,
    ) -> None:
        """Log why (with the thumbprint) and count it under a bounded ``kind`` label."""
        if self._metrics is not None:
            self._metrics.auth_refusals.labels(kind).inc()
        log.warning(
            "authentication refused",
            extra={
                "event": "auth_refused",
                "reason": reason,
                "kind": kind,
                "thumbprint": identity.thumbprint if identity else None,
                "subject": identity.subject if identity else None,
                "peer": request.remote,
                "path": request.path,
            },
        )


__all__ = ["Authenticator", "ConnectionAuth", "GatewayError"]
