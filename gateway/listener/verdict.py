"""OpenSSL's verdict on a presented client certificate, in words a caller can act on.

The TLS layer lets every presented certificate complete the handshake and
records what OpenSSL's chain verification said at each depth (the verify
callback, NGINX's ``optional_no_ca`` model); the policy then decides.  The
``X509_V_ERR_*`` codes below are OpenSSL's (``include/openssl/x509_vfy.h``),
stable across 1.1, 3.x and 4.x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# errno -> (metric/log kind, sentence for the caller).  Kinds are a bounded
# label set: anything else is "verify_failed".
_REASONS: Final[dict[int, tuple[str, str]]] = {
    2: ("untrusted_ca", "not issued by a trusted CA (issuer certificate not found)"),
    20: ("untrusted_ca", "not issued by a trusted CA"),
    21: ("untrusted_ca", "not issued by a trusted CA (no chain to verify)"),
    18: ("self_signed", "self-signed certificate that chains to no trusted CA"),
    19: (
        "untrusted_ca",
        "not issued by a trusted CA (the chain ends in an untrusted self-signed CA)",
    ),
    9: ("not_yet_valid", "certificate is not yet valid"),
    10: ("expired", "certificate has expired"),
    13: ("malformed", "certificate notBefore is malformed"),
    14: ("malformed", "certificate notAfter is malformed"),
    7: ("bad_signature", "certificate signature does not verify"),
    4: ("bad_signature", "certificate signature cannot be decrypted"),
    6: ("bad_signature", "issuer public key cannot be decoded"),
    24: ("invalid_ca", "an issuer in the chain is not a valid CA"),
    25: ("invalid_ca", "path length constraint exceeded"),
    26: ("wrong_purpose", "certificate is not for TLS client authentication (extendedKeyUsage)"),
    28: ("untrusted_ca", "root CA is not trusted for client authentication"),
    32: ("invalid_ca", "an issuer's keyUsage does not allow signing certificates"),
    47: ("invalid_ca", "a name constraint of an issuer is violated"),
    79: ("invalid_ca", "certificate violates RFC 5280 (strict checks)"),
}


@dataclass(frozen=True, slots=True)
class VerifyFailure:
    """The first thing OpenSSL objected to: the one worth telling the caller."""

    depth: int
    errno: int

    @property
    def kind(self) -> str:
        return _REASONS.get(self.errno, ("verify_failed", ""))[0]

    @property
    def reason(self) -> str:
        text = (
            _REASONS.get(self.errno, ("", ""))[1] or f"certificate verification error {self.errno}"
        )
        return (
            text if self.depth == 0 or self.errno == 19 else f"{text} (at chain depth {self.depth})"
        )


def first_failure(errors: list[tuple[int, int]]) -> VerifyFailure | None:
    """The most telling failure: the leaf's own (expiry, purpose) before its issuers'."""
    if not errors:
        return None
    depth, errno = min(errors, key=lambda e: e[0])
    return VerifyFailure(depth, errno)


# Handshake failures (no certificate verdict involved), by OpenSSL reason string.
_HANDSHAKE_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("peer did not return a certificate", "certificate_required"),
    ("certificate required", "certificate_required"),
    ("unsupported protocol", "protocol_version"),
    ("wrong version number", "protocol_version"),
    ("no shared cipher", "no_shared_cipher"),
    ("no suitable signature algorithm", "no_shared_cipher"),
    ("http request", "plain_http"),
    ("certificate verify failed", "untrusted_certificate"),
    ("unexpected eof", "eof"),
)


def handshake_failure_kind(reason: str) -> str:
    lowered = reason.lower()
    for needle, kind in _HANDSHAKE_KINDS:
        if needle in lowered:
            return kind
    return "tls_error"
