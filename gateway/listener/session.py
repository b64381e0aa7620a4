"""What one TLS connection established, for the policy and the logs."""

from __future__ import annotations

from gateway.listener.verdict import VerifyFailure, first_failure


class TlsSession:
    """The peer's certificates, OpenSSL's verdict on them, and the negotiated parameters.

    Exposed to the HTTP layer as the transport's ``ssl_object`` extra info;
    it lives as long as the connection, and so does what is cached on it:
    ``identity`` is the listener Authenticator's (gateway/auth/) resolved
    identity of this connection, as ``(authenticator, ConnectionAuth)``.
    """

    __slots__ = (
        "__weakref__",
        "alpn",
        "cipher",
        "identity",
        "peer_der",
        "server_name",
        "verify_called",
        "verify_errors",
        "version",
    )

    def __init__(self) -> None:
        self.peer_der: bytes | None = None
        self.verify_called = False
        self.verify_errors: list[tuple[int, int]] = []  # (depth, X509_V_ERR_*)
        self.alpn: str | None = None
        self.version = ""
        self.cipher = ""
        self.server_name: str | None = None
        self.identity: tuple[object, object] | None = None

    @property
    def resumed(self) -> bool:
        """A certificate without a verification: the session was resumed from a ticket.

        OpenSSL does not re-run chain verification on resumption, so the
        policy re-checks such connections against the current trust material.
        """
        return self.peer_der is not None and not self.verify_called

    @property
    def chain_verified(self) -> bool:
        """OpenSSL verified the chain against the listener's trust anchors, this handshake."""
        return self.verify_called and not self.verify_errors

    @property
    def failure(self) -> VerifyFailure | None:
        return first_failure(self.verify_errors)

    # The stdlib SSLObject spelling, for code that only wants the leaf.
    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        return self.peer_der

    def selected_alpn_protocol(self) -> str | None:
        return self.alpn
