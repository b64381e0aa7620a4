"""Request and response headers crossing the gateway.

Upstream trusts the identity headers only because the gateway removes every
caller-sent copy first.  Names are compared the way servers and frameworks
may read them: case-insensitively and with ``_`` read as ``-`` (CGI, WSGI and
many frameworks fold ``X_Client_Id`` into the same variable as ``X-Client-Id``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from urllib.parse import quote

from multidict import CIMultiDict, MultiMapping

from gateway.proxy.config import HeaderNames
from gateway.trust.identity import CertificateIdentity
from gateway.upstream.names import response_name

# RFC 9110 §7.6.1: connection-specific fields never forwarded; plus the legacy
# Proxy-Connection and Keep-Alive.  Expect is answered by the gateway itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "expect",
        "host",
        "content-length",
    }
)

# Always removed from requests, enabled or not: an upstream may trust them.
_ALWAYS_MANAGED = (
    "x-client-id",
    "x-client-cert-subject",
    "x-client-cert-thumbprint",
    "x-client-cert-sha256",
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "ssl-client-cert",
    "x-ssl-client-cert",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    # AWS ALB mutual TLS (passthrough and verify modes).
    "x-amzn-mtls-clientcert",
    "x-amzn-mtls-clientcert-leaf",
    "x-amzn-mtls-clientcert-issuer",
    "x-amzn-mtls-clientcert-subject",
    "x-amzn-mtls-clientcert-validity",
    "x-amzn-mtls-clientcert-serial-number",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
)


# Headers that make some upstream route on a path, method, port or scheme the
# gateway never checked: IIS URL Rewrite and Symfony/Zend (X-Original-URL,
# X-Rewrite-URL), method-override middleware of Symfony, Laravel, Rails and
# Express (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override), Spring's
# ForwardedHeaderFilter and others (X-Forwarded-Prefix, -Port, -Server),
# nginx auth_request (X-Original-URI), Traefik (X-Forwarded-Uri), Envoy
# (X-Envoy-Original-Path), Rack and Django scheme detection
# (X-Forwarded-Ssl, X-Forwarded-Scheme, Front-End-Https).  Stripped on every
# route unless it names them in ``allow_override_headers``.
OVERRIDE_HEADERS = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-original-uri",
        "x-forwarded-uri",
        "x-forwarded-path",
        "x-envoy-original-path",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "front-end-https",
    }
)


def header_key(name: str) -> str:
    """Comparison key for a header name."""
    return name.lower().replace("_", "-")


# The keys of the names callers send, as they send them: a dict lookup per
# field on the request path instead of a call.  Bounded: names are the
# caller's to choose, and past the bound they are computed each time.
_KEYS: dict[str, str] = {}
_KEYS_BOUND = 1024


def _cached_key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = header_key(name)
        if len(_KEYS) < _KEYS_BOUND:
            _KEYS[name] = key
    return key


def managed_header_keys(names: HeaderNames) -> frozenset[str]:
    configured = (
        names.client_id,
        names.subject,
        names.thumbprint,
        names.sha256,
        names.xfcc,
        names.client_cert,
    )
    return frozenset(_ALWAYS_MANAGED) | {header_key(n) for n in configured if n}


def _ascii_header_value(value: str) -> str:
    """Percent-encode what cannot travel in a header (controls, non-ASCII, %).

    DN values may legally hold newlines or unicode; sending them raw would
    split or corrupt the header.
    """
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe="".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%"))


def _xfcc_quote(value: str) -> str:
    """Envoy's XFCC quoting: values with , ; = are quoted, " and \\ escaped."""
    value = _ascii_header_value(value)
    if any(ch in value for ch in ',;="\\'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_element(identity: CertificateIdentity) -> str:
    """One Envoy ``x-forwarded-client-cert`` element for the verified certificate."""
    parts = [f"Hash={identity.sha256_hex}", f"Subject={_xfcc_quote(identity.subject_rfc4514)}"]
    parts += [f"URI={_xfcc_quote(uri)}" for uri in identity.sans.uri]
    parts += [f"DNS={_xfcc_quote(name)}" for name in identity.sans.dns]
    return ";".join(parts)


def identity_headers(
    names: HeaderNames, client_id: str | None, identity: CertificateIdentity | None
) -> tuple[tuple[str, str], ...]:
    """The identity headers for one TLS connection: computed once, reused per request."""
    result: list[tuple[str, str]] = []
    if client_id is not None and names.client_id:
        result.append((names.client_id, _ascii_header_value(client_id)))
    if identity is not None:
        if names.subject:
            result.append((names.subject, _ascii_header_value(identity.subject)))
        if names.thumbprint:
            result.append((names.thumbprint, identity.thumbprint))
        if names.sha256:
            result.append((names.sha256, identity.x5t_s256))
        if names.xfcc:
            result.append((names.xfcc, xfcc_element(identity)))
        if names.client_cert:
            # RFC 9440 §2.2: a Structured Field Byte Sequence of the DER.
            result.append((names.client_cert, f":{base64.b64encode(identity.der).decode()}:"))
    return tuple(result)


def connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """Field names listed in Connection (RFC 9110 §7.6.1) are hop-by-hop too."""
    values = headers.getall("Connection", ())
    if len(values) == 1:
        # The usual "keep-alive" or "close", as each caller spells it.
        listed = _LISTED.get(values[0])
        if listed is None:
            listed = _tokens(values)
            if len(_LISTED) < _KEYS_BOUND:
                _LISTED[values[0]] = listed
        return listed
    return _tokens(values)


def _tokens(values: Iterable[str]) -> frozenset[str]:
    return frozenset(header_key(t.strip()) for v in values for t in v.split(",") if t.strip())


# connection_tokens of one Connection value, bounded as _KEYS is.
_LISTED: dict[str, frozenset[str]] = {}


def upstream_request_fields(
    incoming: MultiMapping[str],
    *,
    managed: frozenset[str],
    injected: Iterable[tuple[str, str]],
    host: str,
    keep: Iterable[tuple[str, str]] = (),
    listed: frozenset[str] | None = None,
) -> list[tuple[str, str]]:
    """One pass over the caller's headers: drop hop-by-hop and managed names, then inject.

    The fields in order: the caller's that go on, its first Content-Length
    (where no Transfer-Encoding frames the body), ``Host``, then ``keep`` and
    ``injected`` (the gateway's own observations and identity headers).
    ``listed``: ``connection_tokens(incoming)``, where the caller has it already.
    """
    if listed is None:
        listed = connection_tokens(incoming) if "Connection" in incoming else frozenset()
    out = [
        (name, value)
        for name, value in incoming.items()
        if (key := _KEYS.get(name) or _cached_key(name)) not in HOP_BY_HOP
        and key not in managed
        and key not in listed
    ]
    if "Content-Length" in incoming and "Transfer-Encoding" not in incoming:
        out.append(("Content-Length", incoming["Content-Length"]))
    out.append(("Host", host))
    out.extend(keep)
    out.extend(injected)
    return out


def upstream_request_headers(
    incoming: MultiMapping[str],
    *,
    managed: frozenset[str],
    injected: Iterable[tuple[str, str]],
    host: str,
    keep: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    """``upstream_request_fields`` as a multidict (HTTP/2 upstreams, WebSockets, outbound)."""
    return CIMultiDict(
        upstream_request_fields(incoming, managed=managed, injected=injected, host=host, keep=keep)
    )


_HOP_BY_HOP_BYTES = frozenset(key.encode() for key in HOP_BY_HOP)


def downstream_response_fields(
    raw: Iterable[tuple[bytes, bytes]],
) -> tuple[list[tuple[str, str]], bytes | None, bool]:
    """The upstream's answer fields that go on to the caller, from the raw fields of
    gateway/upstream/: the one response-header filter, for proxied and outbound answers.

    In one pass over bytes: hop-by-hop names (in key form, as
    ``connection_tokens`` reads the names Connection lists, so a listed
    ``X_Hop`` is dropped too; RFC 9110 §7.6.1) and the names listed in
    Connection are dropped.  Also returns the first Content-Length value and
    whether Transfer-Encoding was present, which decide the downstream framing.
    """
    kept: list[tuple[bytes, str, bytes]] = []
    listed: list[bytes] = []
    length: bytes | None = None
    transfer_encoding = False
    for name, value in raw:
        lowered, key, text = response_name(name)
        if key in _HOP_BY_HOP_BYTES:
            if lowered == b"connection":
                listed.append(value)
            elif lowered == b"content-length":
                if length is None:
                    length = value
            elif lowered == b"transfer-encoding":
                transfer_encoding = True
            continue
        kept.append((key, text, value))
    if not listed or all(value.lower() in _HOP_BY_HOP_BYTES for value in listed):
        # The usual answers: no Connection field, or one that lists only a
        # hop-by-hop name (``Connection: keep-alive``, what NGINX and most
        # HTTP/1.1 upstreams send), already dropped above: nothing more to drop.
        return (
            [(text, value.decode("utf-8", "surrogateescape")) for _, text, value in kept],
            length,
            transfer_encoding,
        )
    tokens: frozenset[bytes] = frozenset(
        header_key(t.strip().decode("latin-1")).encode("latin-1")
        for v in listed
        for t in v.split(b",")
        if t.strip()
    )
    return (
        [
            (text, value.decode("utf-8", "surrogateescape"))
            for key, text, value in kept
            if key not in tokens
        ],
        length,
        transfer_encoding,
    )
