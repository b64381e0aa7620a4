"""What the pipeline's stages learn about one request, for the access log and metrics."""

from __future__ import annotations

from dataclasses import dataclass


# init=False and a written __init__: one per request, and the one dataclass
# would generate runs interpreted even in the compiled build (a mypyc class's
# own __init__ is compiled; docs/design/data-plane.md, "The compiled build").
@dataclass(slots=True, init=False)
class RequestFacts:
    route: str
    client_id: str | None
    thumbprint: str | None
    upstream_status: int | None
    oauth_outcome: str | None  # token endpoint: "issued" or the RFC 6749 error code
    upstream_error: str | None  # why a 502/504 (or a cut relay) happened
    body_bytes: int | None  # set by a stage that counts what it sent itself
    grpc_status: int | None  # HTTP/2 gRPC answers

    def __init__(self) -> None:
        self.route = "-"
        self.client_id = None
        self.thumbprint = None
        self.upstream_status = None
        self.oauth_outcome = None
        self.upstream_error = None
        self.body_bytes = None
        self.grpc_status = None
