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
  proxy appended (Envoy ``APPEND_FORWARD``; earlier ones came from further away
  or from the caller).  The whole header is parsed by its grammar
  (``parse_xfcc``), so no caller text can move an element boundary.
* ``nginx`` — ``X-SSL-Client-Cert`` or ``ssl-client-cert`` set from
  ``$ssl_client_escaped_cert`` (URL-encoded PEM).  The deprecated
  ``$ssl_client_cert`` (PEM folded with LF + TAB) never reaches this module:
  the HTTP parser refuses folded lines with a 400, which
  ``folded_certificate_hint`` makes name the variable that works.
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

from gateway.listener.config import ForwardedCertFormat

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


# XFCC grammar (Envoy's documentation of x-forwarded-client-cert):
#   header  = element *( OWS "," OWS element )
#   element = pair *( OWS ";" OWS pair )
#   pair    = key "=" value
#   value   = quoted / *token-char         (may be empty)
#   quoted  = DQUOTE *( qdtext / "\" char ) DQUOTE
# A quote may only open a value, and close it right before ";", "," or the end.
_XFCC_KEY = re.compile(r"[A-Za-z0-9_-]+")
_XFCC_TOKEN = re.compile(r'[^,;="\\\x00-\x1f\x7f]*')
_XFCC_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_XFCC_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_OWS = re.compile(r"[ \t]*")


def _xfcc_error(why: str) -> ForwardedCertError:
    return ForwardedCertError(f"X-Forwarded-Client-Cert does not parse: {why}")


def _skip_ows(value: str, pos: int) -> int:
    match = _OWS.match(value, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _xfcc_value(value: str, pos: int) -> tuple[str, int]:
    """The value starting at ``pos`` (unescaped) and the offset after it."""
    quoted = _XFCC_QUOTED.match(value, pos)
    if quoted is not None:
        return _XFCC_ESCAPE.sub(r"\1", quoted.group(1)), quoted.end()
    if value.startswith('"', pos):
        raise _xfcc_error("unterminated quoted value")
    token = _XFCC_TOKEN.match(value, pos)
    assert token is not None  # the pattern matches the empty string
    return token.group(), token.end()


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Every element of an XFCC header, each a {lowercased key: value} mapping.

    The whole header must follow the grammar, the caller's part included: in
    APPEND_FORWARD mode everything before Envoy's element is the caller's
    text, and a reader that only counts quotes can be made to see element
    boundaries that are not there (an unbalanced quote in the prefix, then a
    ``\\"`` in the appended subject).  So nothing is guessed: a quote inside
    a value, text after a closing quote, a key without "=", an empty element
    or the same key twice in one element is an error.
    """
    elements: list[dict[str, str]] = []
    pos = _skip_ows(value, 0)
    while True:
        element: dict[str, str] = {}
        while True:
            key = _XFCC_KEY.match(value, pos)
            if key is None:
                raise _xfcc_error(f"expected a key at offset {pos}")
            if not value.startswith("=", key.end()):
                raise _xfcc_error(f"expected '=' after {key.group()!r}")
            text, pos = _xfcc_value(value, key.end() + 1)
            name = key.group().lower()
            if name in element:
                raise _xfcc_error(f"{key.group()}= twice in one element")
            element[name] = text
            pos = _skip_ows(value, pos)
            if not value.startswith(";", pos):
                break
            pos = _skip_ows(value, pos + 1)
        elements.append(element)
        pos = _skip_ows(value, pos)
        if pos == len(value):
            return elements
        if value[pos] != ",":
            raise _xfcc_error(f"unexpected {value[pos]!r} at offset {pos}")
        pos = _skip_ows(value, pos + 1)


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
    # The rightmost element is the one the nearest proxy appended (Envoy
    # APPEND_FORWARD; SANITIZE_SET sends that one alone).  Earlier elements
    # are the caller's, or further proxies', claims: parsed (so that the
    # boundary is certain), never read.
    fields = parse_xfcc(value)[-1]
    if "cert" not in fields:
        raise ForwardedCertError(
            "the nearest X-Forwarded-Client-Cert element has no Cert= "
            "(Envoy: set_current_client_cert_details: {cert: true})"
        )
    certs = _pem_certificates(unquote(fields["cert"]))
    if len(certs) != 1:
        raise ForwardedCertError("X-Forwarded-Client-Cert: Cert= holds more than one certificate")
    leaf = certs[0]
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


def folded_certificate_hint(parser_message: str) -> str | None:
    """What to tell a caller whose request the HTTP parser refused, if NGINX's fault.

    NGINX's deprecated ``$ssl_client_cert`` is the PEM with every line break
    followed by a TAB: line folding, with bare LFs.  The parser refuses that
    in any request before the gateway sees it (RFC 9112 §5.2 obs-fold and
    §2.2 bare LF are smuggling shapes), so it cannot be read; say which
    variable works.  ``$ssl_client_escaped_cert`` is one URL-encoded line.
    """
    if "ssl-client-cert" not in parser_message.lower():
        return None
    return (
        "a certificate header folded over several lines, as NGINX's $ssl_client_cert "
        "sends it, cannot be read: set it from $ssl_client_escaped_cert "
        "(docs/load-balancers.md)"
    )


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
