"""``100 Continue`` only after the policy (RFC 9110 §10.1.1).

A 100 invites the caller's body, so it waits for the route's policy: the
listener protocol sends none by itself, and the pipeline's continue stage
asks for it once routing and authentication passed.  The body itself is
streamed and bounded by gateway/upstream/body.py.
"""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.pipeline.messages import Request


def continue_if_expected(request: Request) -> None:
    if request.version < (1, 1):
        return  # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored
    if request.headers["Expect"].strip().lower() != "100-continue":
        raise GatewayError(
            417, "expectation_failed", "only the 100-continue expectation is supported"
        )
    if request.body_exists and not request.content.is_eof() and request.send_continue:
        request.send_continue()
