"""The Authenticator: certificate → identity → registered client, cached (see the package)."""

from __future__ import annotations

import datetime as dt
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from gateway.auth.outcome import ConnectionAuth
from gateway.auth.recent import RecentIdentities
from gateway.errors import (
    GatewayError,
    access_denied,
    client_certificate_required,
    registry_unavailable,
)
from gateway.headers import identity_headers
from gateway.listener.config import ForwardedCertConfig
from gateway.listener.proxy_header import TrustedSources
from gateway.listener.session import TlsSession
from gateway.listener.tls_material import ListenerTls, TrustState
from gateway.listener.verdict import VerifyFailure
from gateway.ops.metrics import Metrics
from gateway.ops.observability import facts
from gateway.ops.throttle import ThrottledWarning
from gateway.pipeline.messages import Request
from gateway.proxy.config import HeaderNames
from gateway.registry.base import Registry, RegistryUnavailable
from gateway.registry.matching import MatchResult
from gateway.trust.chain import CertificateTrust
from gateway.trust.forwarded import HEADERS, ForwardedCertError, header_values, parse_forwarded
from gateway.trust.identity import CertificateError, CertificateIdentity, cached_identity_from_der

log = logging.getLogger("gateway.auth")


_NO_MATCH = MatchResult((), "no client certificate presented")
_NOT_FROM_PROXY = MatchResult(
    (), "forwarded_client_cert.required: the request did not come through a trusted proxy"
)
_NOT_FORWARDED = MatchResult((), "the trusted proxy forwarded no client certificate")
FORWARDED_PER_CONNECTION = 64  # distinct forwarded certificates cached per proxy connection


def _unparsable_forwarded_header() -> GatewayError:
    # A header from a trusted proxy that does not parse unambiguously is a bad
    # request (400), not a refused identity: nothing in it is believed.
    return GatewayError(
        400, "invalid_request", "the forwarded client certificate header does not parse"
    )


@dataclass(slots=True)
class _ProxyConnection:
    """What is known about one connection on a forwarded_client_cert listener."""

    trusted: bool
    by_header: OrderedDict[str, ConnectionAuth] = field(default_factory=OrderedDict)


class Authenticator:
    """Resolves and caches the identity of each connection on one listener."""

    def __init__(
        self,
        registry: Registry,
        tls: ListenerTls,
        header_names: HeaderNames,
        metrics: Metrics | None = None,
        *,
        forwarded: ForwardedCertConfig | None = None,
    ) -> None:
        self._metrics = metrics
        self._registry = registry
        self._tls = tls
        self._names = header_names
        self._recent: RecentIdentities[ConnectionAuth] = RecentIdentities()
        self._forwarded: ForwardedCertConfig | None = None
        self._proxies = TrustedSources(())
        self._proxy_connections: weakref.WeakKeyDictionary[object, _ProxyConnection] = (
            weakref.WeakKeyDictionary()
        )
        self._untrusted_header = ThrottledWarning(log)
        self.accept_forwarded_certificates(forwarded)

    def accept_forwarded_certificates(self, config: ForwardedCertConfig | None) -> None:
        """Take client certificates from ``config.format`` headers sent by trusted proxies."""
        self._forwarded = config
        self._proxies = TrustedSources(config.trusted_proxies if config else ())

    def generation(self) -> tuple[int, int]:
        """(registry, trust) generations now; a ConnectionAuth made at others is stale."""
        return self._registry.generation, self._tls.trust.generation

    def from_trusted_proxy(self, request: Request) -> bool:
        """Is this request's peer one of the trusted proxies (after PROXY protocol)?"""
        return self._forwarded is not None and request.remote in self._proxies

    def forwarded_header_watch(self) -> Callable[[Request], None] | None:
        """A pipeline stage logging forwarded-certificate headers from untrusted sources.

        The header is ignored by ``authenticate`` and stripped before
        forwarding on every route; this says so in the log (rate-limited: a
        caller sending it on every request must not flood the log).  None when
        the listener takes no forwarded certificates.
        """
        config = self._forwarded
        if config is None:
            return None
        names = HEADERS[config.format]
        warn = self._untrusted_header
        proxies = self._proxies

        def watch(request: Request) -> None:
            headers = request.headers
            if any(name in headers for name in names) and request.remote not in proxies:
                warn.warning(
                    "forwarded client certificate header from an untrusted source ignored",
                    event="forwarded_cert_untrusted",
                    header=next(name for name in names if name in headers),
                    peer=request.remote,
                    path=request.path,
                )

        return watch

    def cached(self, request: Request) -> ConnectionAuth | None:
        """This connection's identity if it is known and still current, without waiting.

        None means "call ``authenticate``": a first request, one after a
        registry or trust reload, or a listener that takes forwarded
        certificates (decided per header value there).
        """
        if self._forwarded is not None:
            return None
        transport = request.transport
        if transport is None:
            return None
        session = transport.get_extra_info("ssl_object")
        return self._fresh(session) if isinstance(session, TlsSession) else None

    def _fresh(self, session: TlsSession) -> ConnectionAuth | None:
        entry = session.identity
        if entry is None or entry[0] is not self:
            return None
        cached = entry[1]
        assert isinstance(cached, ConnectionAuth)
        if (
            cached.registry_generation == self._registry.generation
            and cached.trust_generation == self._tls.trust.generation
            and time.time() < cached.valid_until
        ):
            return cached
        return None

    async def authenticate(self, request: Request) -> ConnectionAuth:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if not isinstance(ssl_object, TlsSession):  # connection already closing
            raise client_certificate_required()
        if self._forwarded is not None:
            proxied = self._proxy_connections.get(ssl_object)
            if proxied is None:
                proxied = _ProxyConnection(request.remote in self._proxies)
                self._proxy_connections[ssl_object] = proxied
            if proxied.trusted:
                return await self._authenticate_forwarded(request, proxied, self._forwarded)
            if self._forwarded.required:
                trust = self._tls.trust
                return ConnectionAuth(
                    None, _NOT_FROM_PROXY, (), self._registry.generation, trust.generation
                )
        cached = self._fresh(ssl_object)
        if cached is not None:
            return cached
        auth = await self._resolve(request, ssl_object)
        ssl_object.identity = (self, auth)
        return auth

    async def _resolve(self, request: Request, session: TlsSession) -> ConnectionAuth:
        registry_generation = self._registry.generation
        trust = self._tls.trust
        der = session.peer_der
        if not der:
            return ConnectionAuth(None, _NO_MATCH, (), registry_generation, trust.generation)
        try:
            identity = cached_identity_from_der(der)
        except CertificateError as exc:
            self._refuse(request, None, str(exc), "unparseable")
            raise access_denied("the client certificate could not be parsed") from None
        # The same bytes, shared: a returning client's connections keep the
        # cached identity's copy of the DER, not one each (~600 bytes per idle
        # connection, docs/design/data-plane.md "Memory").
        session.peer_der = identity.der
        failure = session.failure
        # OpenSSL does not verify a resumed session: re-check it against the
        # trust material in force now, which may have dropped its CA.
        verified = trust.accepts(identity) if session.resumed else session.chain_verified
        # A certificate OpenSSL did not verify, or one that can issue
        # certificates (RFC 5280 §4.2.1.9: never a PKI client), can only be the
        # exact certificate a thumbprint secret names.
        exact_only = not verified or identity.is_ca
        recent = self._recent.get(der, verified, registry_generation, trust.generation)
        if recent is not None:
            return recent  # a returning client on a new connection (recent.py)
        chains = trust.chain_facts(der, handshake_verified=verified)
        auth = await self._match(
            request,
            identity,
            trust,
            registry_generation,
            exact_only,
            chains,
            unverified=_unverified_reason(identity, failure, verified),
        )
        if auth.result.client is not None:
            self._recent.put(der, verified, auth)
        return auth

    async def _match(
        self,
        request: Request,
        identity: CertificateIdentity,
        trust: TrustState,
        registry_generation: int,
        exact_only: bool,
        chains: CertificateTrust,
        unverified: tuple[str, str] | None = None,
    ) -> ConnectionAuth:
        now = dt.datetime.now(dt.UTC)
        if not identity.valid_at(now):
            # Also seen when a keep-alive connection outlives its certificate.
            expired = identity.not_after < now
            reason = "certificate has expired" if expired else "certificate is not yet valid"
            self._refuse(request, identity, reason, "expired" if expired else "not_yet_valid")
            raise access_denied(f"certificate refused: {reason}", identity.thumbprint)
        if trust.is_revoked(identity):
            self._refuse(request, identity, "certificate revoked (CRL)", "revoked")
            raise access_denied("certificate refused: revoked (CRL)", identity.thumbprint)
        try:
            result = await self._registry.match(identity, exact_only=exact_only, chains=chains)
        except RegistryUnavailable:
            self._count_lookup("unavailable")
            self._refuse(request, identity, "registry unavailable", "registry_unavailable")
            raise registry_unavailable() from None
        self._count_lookup("match" if result.client is not None else "no_match")
        if result.client is None:
            # The log gets the registry's whole reasoning; the caller only what
            # is wrong with its certificate, never other clients' ids or state.
            reason, kind = result.reason, "no_match"
            public = "not registered: no enabled client has a secret that matches it"
            if result.matches:
                ids = sorted({m.client.client_id for m in result.matches})
                reason, kind = f"certificate matches several clients: {', '.join(ids)}", "ambiguous"
                public = "it matches several registered clients"
            elif unverified is not None:
                # Say first what is wrong with the certificate itself.
                kind, why = unverified
                reason = f"{why}, and no X509CertificateThumbprint secret names it ({reason})"
                public = f"{why}, and no X509CertificateThumbprint secret names it"
            result = MatchResult(result.matches, public)
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

    async def _authenticate_forwarded(
        self, request: Request, proxied: _ProxyConnection, config: ForwardedCertConfig
    ) -> ConnectionAuth:
        """A request from a trusted proxy: the client is whoever its header names."""
        trust = self._tls.trust
        registry_generation = self._registry.generation
        headers = request.headers
        try:
            raw = header_values(
                config.format, {name: headers.getall(name, []) for name in HEADERS[config.format]}
            )
        except ForwardedCertError as exc:
            self._refuse(request, None, f"forwarded certificate: {exc}", "forwarded_malformed")
            raise _unparsable_forwarded_header() from None
        if raw is None:
            return ConnectionAuth(None, _NOT_FORWARDED, (), registry_generation, trust.generation)
        cached = proxied.by_header.get(raw)
        if (
            cached is not None
            and cached.registry_generation == registry_generation
            and cached.trust_generation == trust.generation
            and time.time() < cached.valid_until
        ):
            proxied.by_header.move_to_end(raw)
            return cached
        auth = await self._resolve_forwarded(request, config, raw, trust, registry_generation)
        proxied.by_header[raw] = auth
        if len(proxied.by_header) > FORWARDED_PER_CONNECTION:
            proxied.by_header.popitem(last=False)
        return auth

    async def _resolve_forwarded(
        self,
        request: Request,
        config: ForwardedCertConfig,
        raw: str,
        trust: TrustState,
        registry_generation: int,
    ) -> ConnectionAuth:
        try:
            forwarded = parse_forwarded(config.format, raw)
            if forwarded is None:
                return ConnectionAuth(
                    None, _NOT_FORWARDED, (), registry_generation, trust.generation
                )
            identity = cached_identity_from_der(forwarded.leaf)
            intermediates = [x509.load_der_x509_certificate(der) for der in forwarded.chain]
        except (ForwardedCertError, CertificateError, ValueError) as exc:
            self._refuse(request, None, f"forwarded certificate: {exc}", "forwarded_malformed")
            raise _unparsable_forwarded_header() from None
        chains = trust.chain_facts(
            forwarded.leaf, intermediates=intermediates, handshake_verified=False
        )
        # No handshake vouched for this certificate: verify it as OpenSSL would
        # have.  One that does not verify can still be the exact certificate of
        # a thumbprint secret (the proxy did the proof of possession).
        problem = chains.accepted()
        exact_only = problem is not None or identity.is_ca
        unverified = ("untrusted_ca", f"forwarded certificate: {problem}") if problem else None
        return await self._match(
            request, identity, trust, registry_generation, exact_only, chains, unverified
        )

    def _count_lookup(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.registry_lookups.labels(result).inc()

    def _refuse(
        self,
        request: Request,
        identity: CertificateIdentity | None,
        reason: str,
        kind: str,
    ) -> None:
        """Log why (with the thumbprint) and count it under a bounded ``kind`` label."""
        if self._metrics is not None:
            self._metrics.auth_refusals.labels(kind).inc()
        if identity is not None:
            # The access line of a 401/403 names the certificate that was refused.
            facts(request).thumbprint = identity.thumbprint
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


def _unverified_reason(
    identity: CertificateIdentity, failure: VerifyFailure | None, verified: bool
) -> tuple[str, str] | None:
    """(kind, reason) when only a thumbprint secret could admit this certificate."""
    if not verified:
        if failure is not None:
            return failure.kind, failure.reason
        return "untrusted_ca", "not issued by a CA the gateway trusts now"
    if identity.is_ca:
        return "ca_certificate", "certificate can issue certificates (CA:TRUE or keyCertSign)"
    return None


__all__ = ["Authenticator", "ConnectionAuth"]
