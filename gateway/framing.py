"""Request framing the HTTP parser lets through but a gateway must not relay.

aiohttp's parser (llhttp) already refuses the classic smuggling shapes with a
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
and what a caller sends after it would be a tunnel's bytes.  aiohttp's own
refusals (``OPTIONS *`` and other targets no route matches, a method a route
does not take) are rendered in the gateway's JSON shape like every other.

``answer_policy`` is the listener apps' response hook: no ``Server`` version
banner, and ``Connection: close`` where the connection must not be reused.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError

# RFC 9110 §10.2.4: a product name, without the version details aiohttp and
# Python add ("Python/3.11 aiohttp/3.14.5").
SERVER_NAME = "mtls-gateway"
# aiohttp's own refusals (HTTPException), as the gateway's error codes.
_REFUSALS = {
    404: ("not_found", "no route for this path"),
    405: ("method_not_allowed", "the method is not allowed on this path"),
}

# RFC 9110 §7.2: Host = uri-host [ ":" port ].  uri-host: an IP-literal, or a
# reg-name held to what a DNS name (or an IPv4 address) can be: RFC 3986
# would also allow sub-delims and pct-encoding, but no resolvable name holds
# them, and "a.com,evil.com" would be two authorities to a list-reading
# upstream.  An empty host is allowed (RFC 9112 §3.2, no authority).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~]*)(?::([0-9]*))?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


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
    if host is not None:
        problem = _authority_problem(host)
        if problem is not None:
            return f"invalid Host header: {problem}"
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


def _codings(request: web.Request) -> list[str]:
    return [
        coding.strip().lower()
        for value in request.headers.getall("Transfer-Encoding", ())
        for coding in value.split(",")
    ]


@web.middleware
async def refuse_unsafe_framing(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == hdrs.METH_CONNECT:
        response = GatewayError(
            501, "not_implemented", "CONNECT is not supported: this gateway is not a forward proxy"
        ).response()
        response.force_close()
        return response
    problem = host_problem(request.headers.get("Host"), request.raw_path)
    if problem is not None:
        response = GatewayError(400, "invalid_request", problem).response()
        response.force_close()
        return response
    if "Transfer-Encoding" in request.headers:
        if request.version < (1, 1):
            response = GatewayError(
                400, "invalid_request", "Transfer-Encoding is not defined for HTTP/1.0"
            ).response()
            response.force_close()
            return response
        if _codings(request) != ["chunked"]:
            response = GatewayError(
                501, "not_implemented", "only the chunked transfer coding is supported"
            ).response()
            response.force_close()
            return response
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect or success raised as an exception is an answer, not a refusal
        return _json_refusal(exc).response()


def _json_refusal(exc: web.HTTPException) -> GatewayError:
    default = ("invalid_request", exc.reason) if exc.status < 500 else ("server_error", exc.reason)
    error, description = _REFUSALS.get(exc.status, default)
    kept = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return GatewayError(exc.status, error, description, kept)


ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def answer_policy(draining: Callable[[], bool]) -> ResponseHook:
    """The ``on_response_prepare`` hook of the listener apps (runs once per answer).

    * ``Server``: aiohttp fills in its version banner where the answer has
      none; that exact object is replaced by the product name, so an
      upstream's own ``Server`` (even an identical-looking one: a different
      string object) is relayed as the upstream sent it.
    * ``Connection: close`` while the gateway drains (SIGTERM until the
      listeners close), so callers and load balancers move their keep-alive
      traffic elsewhere; and on a refusal sent before the request body was
      read (a 401/403 to ``Expect: 100-continue``, a 408 to a trickled body):
      the body's bytes would otherwise be read as the next request's, or
      awaited (RFC 9110 §10.1.1, RFC 9112 §9.6).  Not on a 101 upgrade.
    """

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            headers[hdrs.SERVER] = SERVER_NAME
        status = response.status
        if status == 101:
            return
        if draining() or (status >= 400 and not request.content.is_eof()):
            response.force_close()
            headers[hdrs.CONNECTION] = "close"

    return on_prepare
