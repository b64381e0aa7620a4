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

It also holds ``Host`` to its grammar (RFC 9112 §3.2: an invalid value MUST
get a 400): the gateway relays it as ``X-Forwarded-Host``, where a value such
as ``a.com, evil.com`` or ``user@host/path`` would reach upstream link and
redirect builders.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError

# RFC 9110 §7.2: Host = uri-host [ ":" port ]; uri-host is an IP-literal or a
# reg-name (RFC 3986 §3.2.2: unreserved, pct-encoded, sub-delims), possibly empty.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def _codings(request: web.Request) -> list[str]:
    return [
        coding.strip().lower()
        for value in request.headers.getall("Transfer-Encoding", ())
        for coding in value.split(",")
    ]


@web.middleware
async def refuse_unsafe_framing(request: web.Request, handler: Handler) -> web.StreamResponse:
    host = request.headers.get("Host")
    if host is not None and not _HOST.fullmatch(host):
        response = GatewayError(400, "invalid_request", "invalid Host header").response()
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
    return await handler(request)
