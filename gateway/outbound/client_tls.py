"""Client-side TLS for outbound calls: the workload's certificate, trust anchors, pins.

Config-free: built from paths, so the same class serves every outbound
listener and the tests.  The material is rebuilt as a whole when any file
changes and swapped in one assignment; a rebuild that fails keeps the running
material (ghostunnel's certloader rule), so a half-written Secret never takes
outgoing calls down.  Each successful rebuild gets a new ``generation`` with
contexts of its own: new connections present the new certificate and the old
contexts' connections are retired (pool.py), and certificate-bound tokens
(RFC 8705 §3) obtained with an older certificate are not used with a newer
one.

Hostname verification is always on.  A pinned destination certificate
(``server_sha256``) is checked *in addition* to the chain, right after the
handshake and before a byte of the request (or its token) is written: the
stdlib has no verify callback, but ``SSLContext.sslobject_class`` lets the
handshake itself fail, which asyncio and uvloop both surface as a certificate
error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from cryptography.hazmat.primitives import serialization

from gateway.lifecycle import ReloadableBase
from gateway.listener.tls_context import TLS12_CIPHERS
from gateway.listener.tls_material import TlsMaterialError, load_pem_certificates
from gateway.trust.identity import sha1_thumbprint

log = logging.getLogger("gateway.outbound")


@dataclass(frozen=True, slots=True)
class Trust:
    """How one kind of peer is verified: anchors (None: system store) and optional pins."""

    ca: Path | None
    server_sha256: tuple[str, ...] = ()  # lowercase hex SHA-256 of the peer's leaf DER
    where: str = field(default="", compare=False)  # config key of `ca`, for messages


class _PinnedSSLObject(ssl.SSLObject):
    """Fails the handshake unless the peer's leaf is one of ``pins``."""

    pins: ClassVar[tuple[bytes, ...]] = ()

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is done
        der = self.getpeercert(binary_form=True)
        digest = hashlib.sha256(der).digest() if der else b""
        if not any(hmac.compare_digest(digest, pin) for pin in self.pins):
            raise ssl.SSLCertVerificationError(
                1, "server certificate does not match the pinned SHA-256 (tls.server_sha256)"
            )


def _pinned_class(pins: Iterable[str]) -> type[ssl.SSLObject]:
    return type(
        "PinnedSSLObject", (_PinnedSSLObject,), {"pins": tuple(bytes.fromhex(p) for p in pins)}
    )


def _verifying_context(
    trust: Trust, min_version: Literal["1.2", "1.3"], alpn: str = "http/1.1"
) -> ssl.SSLContext:
    # create_default_context: CERT_REQUIRED and check_hostname; the system
    # store only when no CA file is named.
    ctx = ssl.create_default_context(cafile=str(trust.ca) if trust.ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # As on the server side: an intermediate, or the partner's own leaf, may
    # be the anchor without trusting the whole root.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.set_alpn_protocols([alpn])
    if trust.server_sha256:
        ctx.sslobject_class = _pinned_class(trust.server_sha256)
    return ctx


def client_context(
    cert: Path, key: Path, trust: Trust, min_version: Literal["1.2", "1.3"] = "1.2"
) -> ssl.SSLContext:
    """A verifying client context presenting ``cert``; raises OSError/ssl.SSLError/ValueError."""
    ctx = _verifying_context(trust, min_version)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True)
class ClientMaterial:
    """One generation of client TLS material; contexts for each kind of peer."""

    generation: int
    thumbprint: str  # SHA-1 hex, for logs
    x5t_s256: str  # what tokens obtained with it are bound to (RFC 8705 §3.1)
    contexts: dict[Trust, ssl.SSLContext] = field(repr=False)
    # The same, offering ALPN h2 only: an app's h2c calls leave as h2 (RFC 9113 §3.2).
    h2_contexts: dict[Trust, ssl.SSLContext] = field(repr=False, default_factory=dict)

    def context(self, trust: Trust) -> ssl.SSLContext:
        return self.contexts[trust]

    def h2_context(self, trust: Trust) -> ssl.SSLContext:
        return self.h2_contexts[trust]


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def load_client_material(
    *,
    cert: Path,
    key: Path,
    trusts: Iterable[Trust],
    min_version: Literal["1.2", "1.3"],
    where: str,
    generation: int = 1,
) -> ClientMaterial:
    """Every context the listener needs; TlsMaterialError names each bad file."""
    problems: list[str] = []
    der = b""
    try:
        der = load_pem_certificates(cert)[0].public_bytes(serialization.Encoding.DER)
    except (OSError, ValueError, IndexError) as exc:
        problems.append(f"{where}.cert: cannot read {cert}: {exc or 'no certificate'}")
    contexts: dict[Trust, ssl.SSLContext] = {}
    h2_contexts: dict[Trust, ssl.SSLContext] = {}
    for trust in dict.fromkeys(trusts):
        try:
            contexts[trust] = _verifying_context(trust, min_version)
            h2_contexts[trust] = _verifying_context(trust, min_version, alpn="h2")
        except (OSError, ssl.SSLError, ValueError) as exc:
            problems.append(f"{trust.where}: cannot use {trust.ca}: {_ssl_reason(exc)}")
    if not problems:
        for ctx in (*contexts.values(), *h2_contexts.values()):
            try:
                ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems.append(
                    f"{where}.cert: cannot use {cert} with key {key}: {_ssl_reason(exc)}"
                )
                break
    if problems:
        raise TlsMaterialError(problems)
    return ClientMaterial(
        generation=generation,
        thumbprint=sha1_thumbprint(der),
        x5t_s256=base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode(),
        contexts=contexts,
        h2_contexts=h2_contexts,
    )


class ClientTls(ReloadableBase):
    """The current client material of one outbound listener, reloaded when files change."""

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        trusts: Iterable[Trust],
        min_version: Literal["1.2", "1.3"] = "1.2",
        where: str,
        name: str = "outbound.tls",
    ) -> None:
        super().__init__(
            name=name, logger=log, failure="outbound client TLS reload failed, keeping current"
        )
        self._cert = cert
        self._key = key
        self._trusts = tuple(dict.fromkeys(trusts))
        self._min_version = min_version
        self._where = where
        self._material = self._load(1)

    def watched_files(self) -> tuple[Path, ...]:
        return (self._cert, self._key, *(t.ca for t in self._trusts if t.ca is not None))

    @property
    def material(self) -> ClientMaterial:
        return self._material

    def _load(self, generation: int) -> ClientMaterial:
        return load_client_material(
            cert=self._cert,
            key=self._key,
            trusts=self._trusts,
            min_version=self._min_version,
            where=self._where,
            generation=generation,
        )

    def rebuild(self) -> None:
        """A new generation: the session pool opens fresh connections with it."""
        material = self._load(self._material.generation + 1)
        self._material = material
        log.info(
            "outbound client TLS reloaded",
            extra={
                "event": "outbound_tls_reloaded",
                "thumbprint": material.thumbprint,
                "generation": material.generation,
            },
        )
