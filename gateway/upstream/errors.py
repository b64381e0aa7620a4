"""Why an upstream exchange failed.

``label`` names the failure where it is shown (a 502's description, the
access log's ``upstream_error``); the names are the aiohttp client's, which
the gateway used before, so dashboards and alerts keep matching.
"""

from __future__ import annotations

import ssl


class UpstreamError(Exception):
    """The upstream failed; ``label`` names the failure in the 502 description."""

    label = "UpstreamError"


class UpstreamUnreachable(UpstreamError):
    """No connection could be made (refused, DNS, TLS)."""

    label = "ClientConnectorError"


class CertificateRefused(UpstreamUnreachable):
    """The upstream's certificate failed verification: chain, host name or pin.

    The message says what failed, in OpenSSL's words where it has them
    (``certificate verify failed: Hostname mismatch, certificate is not valid
    for 'localhost'.``): the caller of an outbound listener reads it in the
    502 and can act on it without the gateway's logs.
    """

    label = "ClientConnectorCertificateError"

    @classmethod
    def of(cls, exc: ssl.SSLCertVerificationError) -> CertificateRefused:
        # verify_message is OpenSSL's reason; a check of our own (the pin,
        # gateway/outbound/client_tls.py) raises with the reason as strerror.
        detail = getattr(exc, "verify_message", None) or exc.strerror or str(exc)
        return cls(f"certificate verify failed: {detail}")


class UpstreamDisconnected(UpstreamError):
    label = "ServerDisconnectedError"


class InvalidResponse(UpstreamError):
    label = "ClientResponseError"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A deadline passed: connect, response head (blame in ``waiting_on_caller``) or body gap."""

    label = "ServerTimeoutError"

    def __init__(self, message: str, *, waiting_on_caller: bool = False) -> None:
        super().__init__(message)
        self.waiting_on_caller = waiting_on_caller


class UnsafeHeader(ValueError):
    """A field value would break the request head (a CR or LF in it)."""
