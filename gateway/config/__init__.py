"""Configuration: YAML plus environment overrides, validated once into frozen objects.

Each package owns its configuration type and the parser of its section:
gateway/listener/config.py (listeners, TLS, PROXY protocol, forwarded
certificates, limits), gateway/proxy/config.py (routes, identity headers),
gateway/outbound/config.py, gateway/registry/config.py, gateway/oauth/config.py
(tokens) and gateway/ops/config.py (admin, logging).  This package holds what
they share: the reader that collects every problem as ``file:key: message``
(reader.py), the value parsers (values.py), the ``MTLS_GATEWAY_*`` overrides
(env.py), and ``GatewayConfig`` with ``load_config`` (load.py).
"""
