"""gateway.auth.authenticator through the whole gateway: what a connection keeps once authenticated.

The refusal and acceptance rules are tests/test_auth.py's; this pins a memory
rule: an idle connection of a returning client holds no DER copy of its own.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl

from cryptography.hazmat.primitives.serialization import Encoding

from gateway.listener.session import TlsSession
from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki

MTLS_CLIENT = registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))


def _open_with_one_request(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")
    return tls


def _sessions_with_a_certificate() -> list[TlsSession]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, TlsSession) and o.peer_der is not None]


async def test_connections_of_one_certificate_share_one_copy_of_its_der(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[MTLS_CLIENT])
    context = pki.client_context(client_cert)
    earlier = {id(session) for session in _sessions_with_a_certificate()}
    held = [await asyncio.to_thread(_open_with_one_request, gw.port, context) for _ in range(3)]
    try:
        sessions = [s for s in _sessions_with_a_certificate() if id(s) not in earlier]
        assert len(sessions) == 3
        # Equal bytes from three handshakes, one object: the cached identity's.
        assert len({id(session.peer_der) for session in sessions}) == 1
        assert sessions[0].peer_der == client_cert.cert.public_bytes(Encoding.DER)
    finally:
        for tls in held:
            tls.close()
