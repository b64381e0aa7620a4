"""What ``auth: token`` routes need from the token service.

The OAuth package subclasses it (gateway/oauth/resource.py); it lives apart
from the proxy's stages because those are compiled by mypyc (setup.py), and
an interpreted class cannot inherit from a compiled one.
"""

from __future__ import annotations

from gateway.auth import ConnectionAuth
from gateway.errors import GatewayError
from gateway.pipeline.messages import Request
from gateway.proxy.config import RouteConfig


class TokenChecker:
    """The default, wired when no token service is: every token is refused."""

    async def check(
        self, request: Request, route: RouteConfig, auth: ConnectionAuth
    ) -> tuple[tuple[str, str], ...]:
        """Validate the bearer token; return identity headers, or raise GatewayError.

        Owns every client check on the route: the certificate must authenticate
        the token's client, which must pass ``route.clients``.
        """
        raise GatewayError(
            401,
            "invalid_token",
            "token-protected routes need the token service",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
