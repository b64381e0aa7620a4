"""The gateway's upstream client: pooled HTTP/1.1 on llhttp, for proxying and outbound calls.

aiohttp's ClientSession cost ~46 µs of CPU per proxied keep-alive request
(bench/RESULTS.md: ClientRequest/ClientResponse objects, yarl, auto headers,
a connector acquire/release, a ClientTimeout and an ``asyncio.timeout`` per
request).  This client does the same job with one ``asyncio.Protocol`` per
upstream connection:

* the request head goes out as one ``bytes`` object, built by the caller
  (``request_head``);
* the answer is parsed by llhttp (``httptools``, the C parser uvloop's
  authors maintain): Content-Length, chunked and close-delimited bodies,
  HEAD/204/304 without a body, 1xx answers skipped;
* one ``TimerHandle`` per connection covers the response-head deadline and
  the idle gap between body chunks; it is re-armed lazily (a deadline field
  is moved forward, the handle is only replaced when it fires early);
* flow control both ways: upstream reading pauses while the relayed body
  waits downstream, and the request body waits for ``resume_writing``;
* a connection goes back to its pool only when its response was read to the
  end, the request body was sent in full and both sides allow keep-alive.

One module per concern:

  origin.py      an upstream URL parsed once (scheme, host, port, base path)
  errors.py      why an exchange failed (502/504 are decided by the caller)
  head.py        the request head as one bytes object
  connection.py  one connection: parser, deadlines, flow control both ways
  timer.py       the connection's one lazily re-armed deadline
  pool.py        idle connections per origin and TLS client context, bounded;
                 connecting, certificate verification failures named
  body.py        a request body streamed upstream in bounded time
  relay.py       an answer's body as ``Response.stream``; the connection back
                 to the pool at its end
  fetch.py       one small exchange read whole (token requests, discovery)

Inbound proxying (gateway/proxy.py) and outbound origination
(gateway/outbound/) both use it; WebSocket upgrades still use aiohttp's
client.
"""

from gateway.upstream.body import (
    MALFORMED,
    TOO_SLOW,
    BodyPace,
    BodySource,
    body_cut,
    send_body,
)
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import (
    CertificateRefused,
    InvalidResponse,
    UnsafeHeader,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.upstream.fetch import Fetched, fetch
from gateway.upstream.head import request_head, request_line_and_fields
from gateway.upstream.origin import Origin, parse_origin
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.relay import ResponseStream, abandon

__all__ = [
    "MALFORMED",
    "TOO_SLOW",
    "BodyPace",
    "BodySource",
    "CertificateRefused",
    "Fetched",
    "InvalidResponse",
    "Origin",
    "ResponseStream",
    "UnsafeHeader",
    "UpstreamConnection",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "abandon",
    "body_cut",
    "fetch",
    "parse_origin",
    "request_head",
    "request_line_and_fields",
    "send_body",
]
