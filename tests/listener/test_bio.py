"""gateway.listener.bio: sealing plaintext into records, with the production server context.

Both ends are pyOpenSSL connections over memory BIOs, moved by hand: the
server is built by ``build_server_context`` (``Pki.listener_context``), the
client presents the seed's client certificate.
"""

from __future__ import annotations

import contextlib
import os

from OpenSSL import SSL

from gateway.listener.bio import drain, seal, seal_sliced
from gateway.listener.records import BIO_SLICE, RECORD_OVERHEAD
from tests.pki import Issued, Pki


def _pair(pki: Pki, client: Issued) -> tuple[SSL.Connection, SSL.Connection]:
    server_ctx = pki.listener_context(client_certs="required")
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate(client.cert)
    client_ctx.use_privatekey(client.key)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    peer = SSL.Connection(client_ctx, None)
    peer.set_connect_state()
    for _ in range(10):
        for conn in (peer, server):
            with contextlib.suppress(SSL.WantReadError):
                conn.do_handshake()
        _move(peer, server)
        _move(server, peer)
    assert server.get_peer_certificate() is not None
    return server, peer


def _move(source: SSL.Connection, sink: SSL.Connection) -> None:
    with contextlib.suppress(SSL.WantReadError):
        while data := source.bio_read(65536):
            sink.bio_write(data)


def _plaintext(peer: SSL.Connection, ciphertext: list[bytes]) -> bytes:
    out = b""
    for piece in ciphertext:
        peer.bio_write(piece)
        # Up to what OpenSSL has (WantRead), or to the close_notify (ZeroReturn).
        with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
            while True:
                out += peer.recv(65536)
    return out


def test_a_large_write_is_sealed_a_record_at_a_time_and_reads_back_in_order(
    pki: Pki, client_cert: Issued
) -> None:
    server, peer = _pair(pki, client_cert)
    data = os.urandom(5 * BIO_SLICE + 123)
    pieces = seal_sliced(server, data)
    assert len(pieces) == 6
    # No piece holds more than one record: the write BIO never held more.
    assert max(len(piece) for piece in pieces) <= BIO_SLICE + RECORD_OVERHEAD
    assert _plaintext(peer, pieces) == data


def test_a_small_write_is_one_piece_of_ciphertext(pki: Pki, client_cert: Issued) -> None:
    server, peer = _pair(pki, client_cert)
    ciphertext = seal(server, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert _plaintext(peer, [ciphertext]) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert drain(server) == b""  # seal read everything it queued


def test_drain_returns_everything_queued_and_then_nothing(pki: Pki, client_cert: Issued) -> None:
    server, peer = _pair(pki, client_cert)
    server.send(b"first")
    server.send(b"second")
    server.shutdown()  # queues close_notify too
    queued = drain(server)
    assert _plaintext(peer, [queued]) == b"firstsecond"
    assert drain(server) == b""
