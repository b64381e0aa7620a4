"""Outbound mode: a local app's plain-HTTP calls leave as mTLS with a bound token.

The app sends plain HTTP to a loopback listener; the gateway opens mTLS to the
destination with the workload's certificate and, where the destination wants
one, obtains a certificate-bound access token with client_credentials (RFC
6749 §4.4, RFC 8705) and attaches it.  One module per concern:

  client_tls.py  the workload's certificate, trust anchors, pins; hot reload
  pool.py        the listener's upstream connections (gateway/upstream/), per client
                 TLS context; a reload retires the old contexts' connections
  tokens.py      discovery, token requests, cache and single-flight refresh
  routing.py     destination by path prefix and Host
  forwarder.py   the pipeline stage: headers, token, one retry, streaming
  listener.py    one outbound listener assembled from its config (and, for now,
                 the aiohttp adapter in front of the forwarder)
"""
