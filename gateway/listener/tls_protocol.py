"""TLS as an asyncio protocol wrapping another protocol, over pyOpenSSL memory BIOs.

The design of Twisted's ``TLSMemoryBIOProtocol`` and mitmproxy's TLS layer:
ciphertext from the socket transport is written into OpenSSL's read BIO,
plaintext comes out of ``recv`` and goes to the wrapped (HTTP) protocol, whose
writes go through ``send`` and leave as ciphertext read from the write BIO.
Because it is a protocol over *any* transport, the PROXY protocol is simply
one more protocol stacked beneath it (``proxy_header.py``).

The pump is written for the keep-alive hot path (docs/design/tls-layer.md):
one ``bio_write`` + ``recv`` per arriving segment and one ``send`` +
``bio_read`` per response write; the write BIO is drained with one read sized
from what was sent, so no ``WantReadError`` is raised to find its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL, crypto

from gateway.listener.bio import drain, seal, seal_sliced
from gateway.listener.handshakes import HandshakeObserver
from gateway.listener.records import (
    BIO_SLICE,
    PLAIN_HTTP_ANSWER,
    RECORD_PLAINTEXT,
    RecordFramer,
    looks_like_plain_http,
)
from gateway.listener.session import TlsSession
from gateway.listener.tls_context import openssl_reason
from gateway.listener.tls_transport import TlsTransport
from gateway.listener.verdict import handshake_failure_kind
from gateway.ops.throttle import ThrottledWarning

log = logging.getLogger("gateway")
_send_timeouts = ThrottledWarning(log)


class TlsServerProtocol(asyncio.Protocol):
    """Server side of one TLS connection; the wrapped protocol starts after the handshake."""

    __slots__ = (
        "_app",
        "_app_factory",
        "_app_transport",
        "_backlog",
        "_backlog_at",
        "_closing",
        "_conn",
        "_context",
        "_framer",
        "_got_bytes",
        "_loop",
        "_observer",
        "_read_paused",
        "_send_timeout",
        "_session",
        "_timeout",
        "_timer",
        "_transport",
        "_unread",
    )

    def __init__(
        self,
        context: Callable[[], SSL.Context],
        app_factory: Callable[[], asyncio.Protocol],
        *,
        handshake_timeout: float,
        observer: HandshakeObserver,
        send_timeout: float | None = None,
    ) -> None:
        self._context = context  # called per connection: a reload swaps what it returns
        self._app_factory = app_factory
        self._timeout = handshake_timeout
        self._send_timeout = send_timeout
        self._observer = observer
        self._app: asyncio.Protocol | None = None
        # Dropped at connection_lost: with it (and the socket transport) the
        # connection's objects form cycles only the cyclic collector frees.
        self._app_transport: TlsTransport | None = TlsTransport(self)
        self._transport: asyncio.Transport | None = None
        self._conn: SSL.Connection | None = None
        self._session = TlsSession()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._read_paused = False
        self._got_bytes = False
        self._framer = RecordFramer()
        self._unread = 0  # complete records not yet read through recv
        # A large segment's bytes not yet given to the read BIO, and where
        # they start (records.BIO_SLICE).
        self._backlog = b""
        self._backlog_at = 0

    # -- from the transport below -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "write")
        self._transport = transport  # type: ignore[assignment]  # uvloop's is only alike
        conn = SSL.Connection(self._context(), None)
        conn.set_accept_state()
        conn.set_app_data(self._session)
        self._conn = conn
        self._timer = self._loop.call_later(self._timeout, self._handshake_expired)
        self._observer.handshake_started()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self._closing:
            return
        if self._backlog or len(data) > BIO_SLICE:
            self._backlog = self._backlog[self._backlog_at :] + data if self._backlog else data
            self._backlog_at = 0
            self._receive_backlog(conn)
            return
        self._receive(conn, data)

    def _receive(self, conn: SSL.Connection, data: bytes) -> None:
        if self._app is None:
            self._handshake_step(conn, data)
            return
        conn.bio_write(data)
        records = self._framer.feed(data)
        if self._unread >= 0:
            self._unread += records
        self._deliver(conn)

    def _receive_backlog(self, conn: SSL.Connection) -> None:
        # A slice at a time into the read BIO (records.BIO_SLICE), each read
        # out before the next goes in; paused reading stops here and
        # resume_reading carries on.
        while self._backlog and not self._read_paused and self._conn is not None:
            if self._closing:
                self._backlog = b""
                return
            start = self._backlog_at
            piece = self._backlog[start : start + BIO_SLICE]
            self._backlog_at = start + len(piece)
            if self._backlog_at == len(self._backlog):
                self._backlog, self._backlog_at = b"", 0
            if self._app is not None and self._unread >= 0:
                conn.bio_write(piece)
                self._unread += self._framer.feed(piece)
                if self._framer.inside_record:
                    # Reading until OpenSSL has nothing also takes the
                    # record's first part out of the BIO into OpenSSL's own
                    # buffer, which MODE_RELEASE_BUFFERS frees once it is read.
                    self._unread = -1
                self._deliver(conn)
            else:
                self._receive(conn, piece)

    def eof_received(self) -> bool | None:
        # A TCP FIN without close_notify: the peer's data may be truncated
        # (RFC 8446 §6.1); the HTTP layer judges what that means for a request.
        if self._app is None:
            if self._got_bytes:
                self._observer.handshake_failed(
                    "eof", "connection closed during the handshake", self._peer()
                )
            return False
        return self._app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._closing = True
        app, self._app = self._app, None
        if app is not None:
            app.connection_lost(exc)
        elif self._got_bytes and exc is not None:
            self._observer.handshake_failed(
                "reset", f"connection lost during the handshake: {exc}", self._peer()
            )
        self._conn = None
        self._backlog = b""
        # Break the cycles (socket transport <-> this protocol <-> the wrapped
        # protocol's transport): a closed connection, its OpenSSL state
        # included, is freed by reference counting at once, not by a full
        # collection minutes later (bench/RESULTS.md, "Bursts").
        self._transport = None
        self._app_transport = None

    def pause_writing(self) -> None:
        # The socket's write buffer is over its high-water mark: the peer is
        # not reading.  Like NGINX's send_timeout, a write may stay blocked
        # that long; then the connection is aborted, which fails the blocked
        # write in the HTTP layer, and the proxy drops the upstream exchange.
        # One timer per stall, none on the request path.
        if self._app is not None:
            if self._send_timeout is not None and self._timer is None:
                self._timer = self._loop.call_later(self._send_timeout, self._send_expired)
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._cancel_timer()  # after the handshake, the timer is only the send timer
            self._app.resume_writing()

    def _send_expired(self) -> None:
        # Also when already closing: a graceful close waits for the buffer to
        # drain, which a caller that does not read would postpone for ever.
        self._timer = None
        _send_timeouts.warning(
            "send_timeout: the caller stopped reading; connection aborted",
            event="send_timeout",
            peer=self._peer(),
            seconds=self._send_timeout,
        )
        self.abort()

    # -- handshake -------------------------------------------------------------------

    def _handshake_step(self, conn: SSL.Connection, data: bytes) -> None:
        if not self._got_bytes:
            self._got_bytes = True
            if looks_like_plain_http(data):
                # A plain HTTP request on the TLS port: say so, as NGINX does.
                self._observer.handshake_failed(
                    "plain_http", "plain HTTP request on a TLS port", self._peer()
                )
                self._write_raw(PLAIN_HTTP_ANSWER)
                self._close_transport()
                return
        conn.bio_write(data)
        self._framer.feed(data)  # record boundaries are followed from the first byte
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            self._write_raw(drain(conn))
            return
        except SSL.Error as exc:
            self._handshake_failed(conn, exc)
            return
        self._write_raw(drain(conn))
        self._established(conn)

    def _handshake_failed(self, conn: SSL.Connection, exc: SSL.Error) -> None:
        self._cancel_timer()
        failure = self._session.failure
        if failure is not None:  # untrusted_certificates: alert
            kind, reason = failure.kind, failure.reason
        else:
            reason = openssl_reason(exc)
            kind = handshake_failure_kind(reason)
        self._observer.handshake_failed(kind, reason, self._peer())
        self._write_raw(drain(conn))  # the alert OpenSSL queued, so the client learns why
        self._close_transport()

    def _handshake_expired(self) -> None:
        self._timer = None
        if self._app is None and not self._closing:
            self._observer.handshake_failed(
                "timeout", "no TLS handshake within the timeout", self._peer()
            )
            self._closing = True
            if self._transport is not None:
                self._transport.abort()

    def _established(self, conn: SSL.Connection) -> None:
        self._cancel_timer()
        session = self._session
        peer = conn.get_peer_certificate()
        if peer is not None:
            # Straight to DER (one i2d): a cryptography object here would cost
            # a DER round trip per handshake, and the policy parses the DER
            # once per distinct certificate (trust/identity.py's cache).
            session.peer_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
        alpn = conn.get_alpn_proto_negotiated()
        session.alpn = alpn.decode("ascii", "replace") if alpn else None
        session.version = conn.get_protocol_version_name()
        session.cipher = conn.get_cipher_name() or ""
        name = conn.get_servername()
        session.server_name = name.decode("ascii", "replace") if name else None
        self._observer.handshake_completed(session)
        transport = self._app_transport
        if transport is None:
            return
        app = self._app_factory()
        self._app = app
        app.connection_made(transport)
        if self._app is not None and not self._closing:
            # TLS 1.3 clients often send the first request with their Finished:
            # records that arrived with the handshake are read until none is
            # left (they were not counted), then counting takes over.
            self._unread = -1
            self._deliver(conn)

    # -- plaintext both ways -------------------------------------------------------

    def _deliver(self, conn: SSL.Connection) -> None:
        """Read the complete records' plaintext into the protocol, one recv each.

        ``_unread`` counts complete records not read yet; -1 means "uncounted:
        read until OpenSSL has nothing", once, right after the handshake.
        """
        app = self._app
        while self._unread and app is not None and not self._read_paused and not self._closing:
            if self._unread > 0:
                self._unread -= 1
            try:
                plaintext = conn.recv(RECORD_PLAINTEXT)
            except SSL.WantReadError:
                if self._unread < 0:
                    self._unread = 0  # drained: counting from here on
                    return
                continue  # a record without application data (KeyUpdate, ticket)
            except SSL.ZeroReturnError:
                self._close_notify_received(app)
                return
            except SSL.Error:
                # A record failed authentication or a fatal alert arrived: no
                # further byte from this peer can be trusted.
                self._write_raw(drain(conn))
                self.abort()
                return
            app.data_received(plaintext)
            app = self._app

    def _close_notify_received(self, app: asyncio.Protocol) -> None:
        # The peer closed its writing side cleanly (RFC 8446 §6.1); it may
        # still read, so the protocol decides whether to finish first.
        keep_open = app.eof_received()
        if not keep_open:
            self.close()

    def send(self, data: bytes | bytearray | memoryview) -> None:
        conn = self._conn
        if conn is None or self._closing or not data:
            return
        try:
            if len(data) <= BIO_SLICE:
                self._write_raw(seal(conn, data))
                return
            sealed = seal_sliced(conn, data)
        except SSL.Error:
            self.abort()
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.writelines(sealed)  # one writev for all the slices

    def _write_raw(self, data: bytes) -> None:
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    # -- what the wrapped protocol's transport does -----------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        if conn is not None and self._app is not None:
            with contextlib.suppress(SSL.Error):
                conn.shutdown()  # queues close_notify; the peer's is not awaited
            self._write_raw(drain(conn))
        self._close_transport()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self._transport is not None and not self._closing:
                self._transport.resume_reading()
                # Plaintext already in OpenSSL's buffers arrives with no new
                # segment to trigger it: deliver it on the next loop turn
                # (not from inside the caller's own call stack).
                self._loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        if self._conn is not None and not self._read_paused:
            self._deliver(self._conn)
            self._receive_backlog(self._conn)

    @property
    def closing(self) -> bool:
        return self._closing or self._transport is None or self._transport.is_closing()

    @property
    def reading(self) -> bool:
        return not self._read_paused

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def session(self) -> TlsSession:
        return self._session

    @property
    def app(self) -> asyncio.Protocol | None:
        return self._app

    @app.setter
    def app(self, protocol: asyncio.Protocol) -> None:
        self._app = protocol

    def context(self) -> SSL.Context | None:
        return self._conn.get_context() if self._conn is not None else None

    def _close_transport(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()  # after what is buffered is written

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _peer(self) -> Any:
        return self._transport.get_extra_info("peername") if self._transport is not None else None
