"""Request framing the HTTP parser lets through but a gateway must not relay.

The parser (llhttp, gateway/http1/) already refuses the classic smuggling shapes with a
400: Content-Length with Transfer-Encoding, repeated or signed lengths,
malformed chunks, obs-fold, bare LF.  Two shapes pass it and are refused here,
before any handler reads the body:

* a transfer coding other than ``chunked`` (``gzip, chunked``): the parser
  removes the chunking but applies no other coding, so relaying the body
  would hand the upstream coded bytes under no label.  RFC 9112 §6.1: answer
  501 (Not Implemented);
* ``Transfer-Encoding`` on an HTTP/1.0 request: RFC 9112 §6.1 says the
  framing MUST be treated as faulty and the connection closed, since an
  HTTP/1.0 hop in front of the gateway would not have read it as chunked.

It also holds ``Host`` to one authority (``host_problem``): the gateway
relays it as ``X-Forwarded-Host``, where a value such as ``a.com, evil.com``
or ``user@host/path`` would reach upstream link and redirect builders.
RFC 9112 §3.2: an invalid Host MUST get a 400.

``CONNECT`` gets a 501: the gateway is no forward proxy (RFC 9110 §9.3.6),
and what a caller sends after it would be a tunnel's bytes.  ``OPTIONS *``
matches no route and gets the JSON 404 every unrouted target gets.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from gateway.errors import closing_json_error
from gateway.pipeline.messages import Request, Response

# RFC 9110 §7.2: Host = uri-host [ ":" port ].  uri-host: an IP-literal, or a
# reg-name held to what a DNS name (or an IPv4 address) can be: RFC 3986
# would also allow sub-delims and pct-encoding, but no resolvable name holds
# them, and "a.com,evil.com" would be two authorities to a list-reading
# upstream.  An empty host is allowed (RFC 9112 §3.2, no authority).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~]*)(?::([0-9]*))?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# Host values already found to be one valid authority: callers send the same
# few on every request, so the grammar runs once per value, not per request.
# Bounded, since callers choose them; past the bound each is checked anew.
_VALID_HOSTS: set[str] = set()
_VALID_HOSTS_BOUND = 1024


def _authority_problem(authority: str) -> str | None:
    match = _HOST.fullmatch(authority)
    if match is None:
        return "not one host[:port]"
    port = match.group(2)
    # RFC 3986 §3.2.3: an empty port means the default one.
    if port and (len(port) > 5 or not 0 < int(port) <= 65535):
        return "port out of range"
    return None


def _comparable(authority: str, scheme: str) -> str:
    """Lowercased, with an empty or the scheme's default port removed."""
    match = _HOST.fullmatch(authority)
    assert match is not None  # checked by _authority_problem first
    host, port = match.group(1).lower(), match.group(2) or ""
    return host if port in ("", _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"


def host_problem(host: str | None, target: str) -> str | None:
    """Why ``Host`` (None: absent) and the request target name no single authority.

    An absolute-form target (RFC 9112 §3.2.2) must carry no userinfo (RFC
    9110 §4.2.4), and the Host a client MUST send with it must be identical
    to its authority: a server would use the target's, the upstream may use
    the Host, so two different ones are refused rather than one picked.
    """
    if host is not None and host not in _VALID_HOSTS:
        problem = _authority_problem(host)
        if problem is not None:
            return f"invalid Host header: {problem}"
        if len(_VALID_HOSTS) < _VALID_HOSTS_BOUND:
            _VALID_HOSTS.add(host)
    if target.startswith("/") or target == "*":
        return None
    parts = urlsplit(target)
    if "@" in parts.netloc:
        return "userinfo in the request target"
    if not parts.netloc or _authority_problem(parts.netloc) is not None:
        return "invalid authority in the request target"
    if host is not None:
        scheme = parts.scheme.lower()
        if _comparable(parts.netloc, scheme) != _comparable(host, scheme):
            return "the request target's authority is not the Host header (RFC 9112 §3.2.2)"
    return None


def _codings(request: Request) -> list[str]:
    return [
        coding.strip().lower()
        for value in request.headers.getall("Transfer-Encoding", ())
        for coding in value.split(",")
    ]


def check_framing(request: Request) -> Response | None:
    """The pipeline's first stage: None when the request may go on, else the refusal."""
    if request.method == "CONNECT":
        return closing_json_error(
            501, "not_implemented", "CONNECT is not supported: this gateway is not a forward proxy"
        )
    hosts = request.headers.getall("Host", ())
    if len(hosts) > 1:
        # RFC 9112 §3.2: more than one Host field MUST get a 400.
        return closing_json_error(400, "invalid_request", "more than one Host header")
    if not hosts and request.version >= (1, 1) and request.protocol != "HTTP/2":
        # RFC 9112 §3.2: an HTTP/1.1 request without Host MUST get a 400.
        return closing_json_error(400, "invalid_request", "an HTTP/1.1 request needs a Host header")
    problem = host_problem(hosts[0] if hosts else None, request.raw_path)
    if problem is not None:
        return closing_json_error(400, "invalid_request", problem)
    if "Transfer-Encoding" in request.headers:
        if request.version < (1, 1):
            return closing_json_error(
                400, "invalid_request", "Transfer-Encoding is not defined for HTTP/1.0"
            )
        codings = _codings(request)
        if codings[-1:] != ["chunked"]:
            # RFC 9112 §6.3: chunked not last, the body length cannot be
            # determined: 400 and close.
            return closing_json_error(
                400, "invalid_request", "chunked must be the final transfer coding"
            )
        if codings != ["chunked"]:
            return closing_json_error(
                501, "not_implemented", "only the chunked transfer coding is supported"
            )
    return None
