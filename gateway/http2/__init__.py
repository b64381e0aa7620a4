"""HTTP/2 (RFC 9113) on the ``h2`` library: the downstream protocol, the upstream client, gRPC answers.

``server.py`` serves one TLS connection whose ALPN chose ``h2``; every stream
becomes a ``gateway.pipeline.messages.Request`` for the same pipeline as
HTTP/1.1.  ``client.py`` carries a route's requests to an upstream that
speaks HTTP/2 (``upstream_protocol: h2c | h2``).  ``grpc.py`` renders the
gateway's refusals as gRPC statuses for gRPC callers.
"""
