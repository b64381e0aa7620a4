#!/usr/bin/env python3
"""OpenSSL's state per idle server connection, in-process, by protocol and key exchange.

``compare.py`` measures RSS per idle connection of the whole gateway; this
says how much of it OpenSSL itself keeps, with nothing else in the process.
For each variant, ``--connections`` client/server pairs of pyOpenSSL
connections (the gateway's settings: memory BIOs, ``MODE_RELEASE_BUFFERS``,
no session cache, stateless tickets, a verify callback) complete a full
handshake and one request; then the clients are freed and glibc's
``mallinfo2`` in-use bytes are compared with the count before: what stays is
the server connections' state.

Variants: TLS 1.3 with a client certificate, with the key share a client
on OpenSSL 3.5 or later offers first (``X25519MLKEM768``: our OpenSSL 4.0
against itself) and with a classic P-256 share (what OpenSSL 3.0 clients
such as ``ab`` and ``bench/hold.py`` end up with is classic too); without a
client certificate; TLS 1.2.

    python3 bench/tls_memory.py --connections 2000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from gateway.ops.heap import mallinfo


def _in_use() -> int:
    info = mallinfo()
    assert info is not None, "needs glibc's mallinfo2"
    return int(info.uordblks + info.hblkhd)


def _issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .sign(issuer[1] if issuer else key, hashes.SHA256())
    )
    return cert, key


class Variant:
    def __init__(self, name: str, *, tls12: bool, client_cert: bool, classic_share: bool) -> None:
        self.name = name
        self.tls12 = tls12
        self.client_cert = client_cert
        self.classic_share = classic_share


VARIANTS = (
    Variant(
        "TLS 1.3, client certificate, hybrid share",
        tls12=False,
        client_cert=True,
        classic_share=False,
    ),
    Variant(
        "TLS 1.3, client certificate, P-256 share",
        tls12=False,
        client_cert=True,
        classic_share=True,
    ),
    Variant(
        "TLS 1.3, no client certificate, hybrid share",
        tls12=False,
        client_cert=False,
        classic_share=False,
    ),
    Variant(
        "TLS 1.3, no client certificate, P-256 share",
        tls12=False,
        client_cert=False,
        classic_share=True,
    ),
    Variant("TLS 1.2, client certificate", tls12=True, client_cert=True, classic_share=False),
)


def _contexts(variant: Variant) -> tuple[SSL.Context, SSL.Context]:
    ca = _issue("bench CA")
    server_cert, server_key = _issue("localhost", ca)
    client_cert, client_key = _issue("client", ca)
    server = SSL.Context(SSL.TLS_SERVER_METHOD)
    server.set_min_proto_version(SSL.TLS1_2_VERSION)
    if variant.tls12:
        server.set_max_proto_version(SSL.TLS1_2_VERSION)
    server.use_certificate(crypto.X509.from_cryptography(server_cert))
    server.use_privatekey(crypto.PKey.from_cryptography_key(server_key))
    store = server.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(ca[0]))
    if variant.client_cert:
        server.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
    server.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    server.set_mode(SSL.MODE_RELEASE_BUFFERS)
    server.set_session_id(b"bench")
    server.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    client = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client.use_certificate(crypto.X509.from_cryptography(client_cert))
    client.use_privatekey(crypto.PKey.from_cryptography_key(client_key))
    if variant.classic_share:
        client.set_tmp_ecdh(ec.SECP256R1())
    return server, client


def _pump(one: SSL.Connection, other: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for source, sink in ((one, other), (other, one)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                sink.bio_write(data)
                moved = True


def _recv(conn: SSL.Connection) -> None:
    with contextlib.suppress(SSL.WantReadError):
        conn.recv(65536)


def _pair(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> tuple[SSL.Connection, SSL.Connection]:
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        for conn in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                conn.do_handshake()
        _pump(client, server)
    client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    _pump(client, server)
    _recv(server)
    server.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    _pump(server, client)
    _recv(client)  # and the tickets
    _pump(client, server)
    _recv(server)
    return server, client


def measure(variant: Variant, connections: int) -> tuple[float, str, str]:
    server_ctx, client_ctx = _contexts(variant)
    for _ in range(50):  # first-use allocations out of the count
        _pair(server_ctx, client_ctx)
    gc.collect()
    before = _in_use()
    servers = []
    clients = []
    for _ in range(connections):
        server, client = _pair(server_ctx, client_ctx)
        servers.append(server)
        clients.append(client)
    del clients, client
    gc.collect()
    per = (_in_use() - before) / connections / 1024
    return per, servers[0].get_protocol_version_name(), servers[0].get_group_name() or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args(argv)
    print(
        f"OpenSSL {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}, {args.connections} idle server connections"
    )
    for variant in VARIANTS:
        per, version, group = measure(variant, args.connections)
        print(
            f"  {variant.name:<46} {per:5.1f} KiB per connection ({version}, {group})", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
