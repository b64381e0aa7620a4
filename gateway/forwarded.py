"""Client certificates forwarded in a header by a TLS-terminating proxy.  Pure parsing.

Behind a load balancer that terminates the client's TLS, the gateway never
sees the client certificate in a handshake: the balancer sends it in a header.
Each format is read here into DER bytes (leaf, then any chain the header
carries); what to trust is decided by the caller (auth.py), which accepts a
header only from ``trusted_proxies`` and then verifies the certificate exactly
as OpenSSL verifies a handshake one (chain.py).

Formats (``forwarded_client_cert.format``):

* ``rfc9440`` — ``Client-Cert: :<base64 DER>:`` (RFC 9440 §2.2, a Structured
  Field Byte Sequence) and optionally ``Client-Cert-Chain: :<b64>:, :<b64>:``
  (§2.3, an sf-list, issuer of the previous first).
* ``envoy_xfcc`` — ``X-Forwarded-Client-Cert``: comma-separated elements, each
  ``Key=Value;...`` with ``Cert="<URL-encoded PEM>"`` and optionally
  ``Chain="<URL-encoded PEM chain>"``; the last element is the one the nearest
  proxy appended (Envoy ``APPEND_FORWARD``; earlier ones came from further away).
* ``nginx`` — ``X-SSL-Client-Cert`` or ``ssl-client-cert`` set from
  ``$ssl_client_escaped_cert`` (URL-encoded PEM; the deprecated
  ``$ssl_client_cert``, tab-folded PEM, is read too).
* ``traefik`` — ``X-Forwarded-Tls-Client-Cert`` from ``passTLSClientCert: {pem:
  true}``: base64 DER without PEM armour, certificates comma-separated, leaf
  first, URL-encoded by older releases.
* ``aws_alb`` — ``X-Amzn-Mtls-Clientcert`` (mutual TLS "passthrough" mode):
  URL-encoded PEM, leaf first, then the chain.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from gateway.config import ForwardedCertFormat

MAX_CERTIFICATES: Final = 8  # leaf plus chain, per header
MAX_VALUE_BYTES: Final = 64 * 1024

# The header(s) each format reads; all of them are managed names (headers.py
# strips them from every request before forwarding upstream).
HEADERS: Final[Mapping[str, tuple[str, ...]]] = {
    "rfc9440": ("Client-Cert", "Client-Cert-Chain"),
    "envoy_xfcc": ("X-Forwarded-Client-Cert",),
    "nginx": ("X-SSL-Client-Cert", "ssl-client-cert"),
    "traefik": ("X-Forwarded-Tls-Client-Cert",),
    "aws_alb": ("X-Amzn-Mtls-Clientcert",),
}

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_SF_BINARY = re.compile(r":([A-Za-z0-9+/]*={0,2}):")


class ForwardedCertError(ValueError):
    """The header is present but does not carry a usable certificate."""


@dataclass(frozen=True, slots=True)
class ForwardedCertificate:
    leaf: bytes  # DER
    chain: tuple[bytes, ...] = ()  # DER of intermediates, as the proxy sent them


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ForwardedCertError("invalid base64 in the certificate header") from None


def _pem_certificates(text: str) -> list[bytes]:
    blocks = _PEM.findall(text)
    if not blocks:
        raise ForwardedCertError("no PEM certificate in the header")
    return [_b64(block) for block in blocks]


def _split_quoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes (backslash escapes inside)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ForwardedCertError("unterminated quoted value in X-Forwarded-Client-Cert")
    parts.append("".join(current))
    return parts


def _unquote_xfcc(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _rfc9440(cert: str, chain: str | None) -> ForwardedCertificate:
    # RFC 9440 §2.2: exactly one sf-binary item.
    match = _SF_BINARY.fullmatch(cert.strip())
    if match is None:
        raise ForwardedCertError("Client-Cert is not a Structured Field Byte Sequence (RFC 9440)")
    leaf = _b64(match.group(1))
    intermediates: list[bytes] = []
    if chain:
        for item in chain.split(","):
            item_match = _SF_BINARY.fullmatch(item.strip())
            if item_match is None:
                raise ForwardedCertError("Client-Cert-Chain is not a list of byte sequences")
            intermediates.append(_b64(item_match.group(1)))
    return ForwardedCertificate(leaf, tuple(intermediates))


def _envoy(value: str) -> ForwardedCertificate:
    elements = _split_quoted(value, ",")
    fields: dict[str, str] = {}
    for pair in _split_quoted(elements[-1], ";"):
        key, sep, raw = pair.partition("=")
        if sep:
            fields[key.strip().lower()] = _unquote_xfcc(raw)
    if "cert" not in fields:
        raise ForwardedCertError(
            "the nearest X-Forwarded-Client-Cert element has no Cert= "
            "(Envoy: set_current_client_cert_details: {cert: true})"
        )
    leaf = _pem_certificates(unquote(fields["cert"]))[0]
    chain: list[bytes] = []
    if "chain" in fields:
        chain = [der for der in _pem_certificates(unquote(fields["chain"])) if der != leaf]
    return ForwardedCertificate(leaf, tuple(chain))


def _pem_header(value: str) -> ForwardedCertificate:
    # unquote, never unquote_plus: a "+" of base64 sent raw is not a space.
    certs = _pem_certificates(unquote(value) if "%" in value else value)
    return ForwardedCertificate(certs[0], tuple(certs[1:]))


def _traefik(value: str) -> ForwardedCertificate:
    text = unquote(value) if "%" in value else value
    if "BEGIN CERTIFICATE" in text:
        return _pem_header(text)
    certs = [_b64(item) for item in text.split(",") if item.strip()]
    if not certs:
        raise ForwardedCertError("empty X-Forwarded-Tls-Client-Cert")
    return ForwardedCertificate(certs[0], tuple(certs[1:]))


def header_values(fmt: ForwardedCertFormat, get_all: Mapping[str, list[str]]) -> str | None:
    """The raw header text this format reads (the cache key); None when absent.

    ``get_all`` maps each of ``HEADERS[fmt]`` to its field values.  Values of a
    repeated field are joined as HTTP lists are (RFC 9110 §5.3); for formats
    that carry one certificate, a repeated field is refused instead.
    """
    names = HEADERS[fmt]
    if fmt == "rfc9440":
        certs = get_all.get(names[0], [])
        if not certs:
            return None
        if len(certs) > 1:
            raise ForwardedCertError("more than one Client-Cert field (RFC 9440 §2.2)")
        chain = ", ".join(get_all.get(names[1], []))
        return f"{certs[0]}\n{chain}" if chain else certs[0]
    if fmt == "envoy_xfcc":
        values = get_all.get(names[0], [])
        return ",".join(values) if values else None
    present = [value for name in names for value in get_all.get(name, [])]
    if not present:
        return None
    if len(present) > 1:
        raise ForwardedCertError(f"more than one {' / '.join(names)} field")
    return present[0]


def parse_forwarded(fmt: ForwardedCertFormat, raw: str) -> ForwardedCertificate | None:
    """The certificate a header carries; None for an empty value (no client certificate)."""
    if not raw.strip():
        return None
    if len(raw) > MAX_VALUE_BYTES:
        raise ForwardedCertError("certificate header too large")
    if fmt == "rfc9440":
        cert, _, chain = raw.partition("\n")
        result = _rfc9440(cert, chain or None)
    elif fmt == "envoy_xfcc":
        result = _envoy(raw)
    elif fmt == "traefik":
        result = _traefik(raw)
    else:  # nginx, aws_alb
        result = _pem_header(raw)
    if len(result.chain) + 1 > MAX_CERTIFICATES:
        raise ForwardedCertError(f"more than {MAX_CERTIFICATES} certificates in the header")
    return result
