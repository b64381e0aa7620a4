"""Server-side pyOpenSSL contexts: protocol versions, suites, ALPN, and the verify callback.

pyOpenSSL runs on the OpenSSL that cryptography's wheel bundles (4.x), not on
the system's 3.0 under the stdlib ``ssl`` module; full mTLS handshakes cost
about 40 % less CPU there (docs/design/tls-layer.md).  More importantly it has
a verify callback: every presented certificate completes the handshake, with
OpenSSL's verdict recorded per chain depth, and the policy decides in Python
(``gateway.auth``).  So a refused caller gets a JSON answer naming the reason
instead of a reset, and a self-issued certificate registered by thumbprint
needs no trust-store entry: nothing registered by thumbprint can ever issue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from OpenSSL import SSL, crypto

from gateway.listener.session import TlsSession

# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla "intermediate").
# TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1",)
# With HTTP/2 on (listeners[].http2), h2 is preferred when a client offers
# both.  RFC 9113 §9.2 asks of TLS 1.2 what this context does anyway: no
# renegotiation, no compression, only ephemeral AEAD suites (TLS12_CIPHERS).
ALPN_WITH_HTTP2: tuple[bytes, ...] = (b"h2", b"http/1.1")
# Resumption needs a session id context once the server asks for certificates
# (OpenSSL refuses to resume otherwise); any constant string serves.
_SESSION_ID_CONTEXT = b"mtls-gateway"

UntrustedMode = Literal["respond", "alert"]
_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1  # include/openssl/ssl.h; pyOpenSSL exports no name for it


def _alpn_selector(protocols: Sequence[bytes]) -> Callable[[SSL.Connection, list[bytes]], Any]:
    """The server's preference wins (RFC 7301 §3.2 lets the server choose)."""

    def select(_conn: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        # RFC 7301 §3.2 allows a server to continue without ALPN; a client that
        # offered only protocols we do not serve then sees none rather than a
        # wrong one.
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _record_verdict(
    conn: SSL.Connection, _cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """Let the handshake complete whatever the verdict; keep the verdict for the policy."""
    session = conn.get_app_data()
    if isinstance(session, TlsSession):
        session.verify_called = True
        if not ok:
            session.verify_errors.append((depth, errno))
    return True


def _end_untrusted(
    conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """``untrusted_certificates: alert``: OpenSSL ends the handshake with the matching alert."""
    _record_verdict(conn, cert, errno, depth, ok)
    return bool(ok)


def build_server_context(
    *,
    cert: Path,
    key: Path,
    anchors: Sequence[x509.Certificate],
    client_certs: Literal["optional", "required"],
    min_version: Literal["1.2", "1.3"],
    untrusted: UntrustedMode = "respond",
    alpn: Sequence[bytes] = ALPN_PROTOCOLS,
) -> SSL.Context:
    """One listener's context; raises ``SSL.Error`` or ``OSError`` for unusable files."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    # Idle keep-alive connections hold no read/write buffers (~25 KiB each).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # pyOpenSSL turns partial writes on; into a memory BIO a write cannot
    # block, so one SSL_write should take a whole response chunk (one cffi
    # call, not one per 16 KiB record).
    ctx.clear_mode(_SSL_MODE_ENABLE_PARTIAL_WRITE)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None  # a new context always has one
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    # Partial chains let an operator trust an intermediate without its root.
    # Only CA certificates are ever anchors (tls_material.py): a leaf is trusted as
    # itself only through a registry thumbprint, never through the store.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if client_certs == "required" else 0)
    ctx.set_verify(mode, _end_untrusted if untrusted == "alert" else _record_verdict)
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    # Stateless tickets (RFC 8446 §4.6.1, RFC 5077) resume without a server-side
    # cache; OpenSSL's internal cache would keep every session, peer
    # certificate included, for up to 20,000 connections after they closed.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_alpn_select_callback(_alpn_selector(tuple(alpn)))
    return ctx


def openssl_reason(exc: BaseException) -> str:
    """A readable reason from a pyOpenSSL error (its args hold (lib, func, reason) tuples)."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [
            str(item[2]) for item in exc.args[0] if isinstance(item, tuple) and len(item) == 3
        ]
        if reasons:
            return "; ".join(reasons)
    if isinstance(exc, SSL.SysCallError):
        return "connection closed during the handshake"
    return str(exc) or type(exc).__name__
