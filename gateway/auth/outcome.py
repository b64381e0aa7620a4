"""What the gateway decided about one connection's certificate."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import access_denied, client_certificate_required
from gateway.registry.matching import MatchResult
from gateway.registry.model import Client
from gateway.trust.identity import CertificateIdentity


@dataclass(frozen=True, slots=True)
class ConnectionAuth:
    """The outcome for one connection at one registry and trust generation."""

    identity: CertificateIdentity | None
    result: MatchResult
    headers: tuple[tuple[str, str], ...]  # identity headers for this client
    registry_generation: int
    trust_generation: int
    # The certificate's notAfter: a keep-alive connection outliving its
    # certificate is re-checked (and refused) instead of served from cache.
    valid_until: float = float("inf")

    @property
    def client(self) -> Client | None:
        return self.result.client

    def require_client(self) -> Client:
        """The single registered client, or the error to answer with (fail closed)."""
        if self.identity is None:
            raise client_certificate_required()
        client = self.result.client
        if client is None:
            raise access_denied(
                f"certificate refused: {self.result.reason}", self.identity.thumbprint
            )
        return client
