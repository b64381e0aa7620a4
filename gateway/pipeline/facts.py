"""What the pipeline's stages learn about one request, for the access log and metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestFacts:
    route: str = "-"
    client_id: str | None = None
    thumbprint: str | None = None
    upstream_status: int | None = None
    oauth_outcome: str | None = None  # token endpoint: "issued" or the RFC 6749 error code
    upstream_error: str | None = None  # why a 502/504 (or a cut relay) happened
    body_bytes: int | None = None  # set by a stage that counts what it sent itself
    grpc_status: int | None = None  # HTTP/2 gRPC answers
