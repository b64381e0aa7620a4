"""Accepting connections: sockets, the PROXY protocol, TLS over memory BIOs, the connection cap.

Each accepted connection is a short stack of asyncio protocols, built once per
connection and visible in one place (``stack.py``)::

    socket → [PROXY header] → TLS (pyOpenSSL, memory BIOs) → HTTP/1.1

Design notes: docs/design/tls-layer.md.
"""
