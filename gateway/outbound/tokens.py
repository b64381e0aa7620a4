"""Access tokens for outbound calls: client_credentials over mTLS, cached and refreshed.

What IdentityModel's ``RequestClientCredentialsTokenAsync`` does for a .NET
client (the seed's flow), done here for an app that knows nothing of OAuth:

* the token endpoint is configured, or found through discovery (OpenID
  Connect Discovery §4, RFC 8414 §3), preferring
  ``mtls_endpoint_aliases.token_endpoint`` (RFC 8705 §5);
* the request is RFC 6749 §4.4.2 client_credentials with ``client_id`` in the
  body and the client authenticated by its certificate (RFC 8705 §2), over
  the listener's own connections (gateway/upstream/), so the token is bound
  to the certificate the destination will see (RFC 8705 §3);
* one token per (client, scopes) is cached and refreshed before it expires:
  at 80 % of its lifetime, or 60 s before expiry for long-lived tokens.
  Past that point the still-valid token keeps being sent while one refresh
  runs; once expired, callers wait for it.  Either way there is one request
  in flight, however many callers wait (single flight: a shared task);
* a token is never logged, never put in an exception message and never in a
  ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from gateway.outbound.client_tls import ClientMaterial, Trust
from gateway.outbound.config import OutboundTokenConfig
from gateway.outbound.pool import OutboundPool
from gateway.upstream import (
    CertificateRefused,
    Fetched,
    UpstreamError,
    UpstreamUnreachable,
    fetch,
)

log = logging.getLogger("gateway.outbound")

REFRESH_LEAD_SECONDS = 60.0  # refresh this long before expiry ...
REFRESH_FRACTION = 0.2  # ... or at 80 % of the lifetime, whichever comes later
EXPIRY_SKEW_SECONDS = 5.0  # never send a token this close to its expiry (clock skew, latency)
DEFAULT_LIFETIME_SECONDS = 300  # RFC 6749 §5.1: expires_in is only RECOMMENDED
FAILURE_BACKOFF_SECONDS = 1.0  # a failed request is not repeated sooner than this
MAX_RESPONSE_BYTES = 64 * 1024
DISCOVERY_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")


class TokenUnavailable(Exception):
    """Why no token could be had: names the endpoint and the cause, never a token."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    x5t_s256: str  # the certificate it is bound to (the one presented when it was issued)
    refresh_at: float  # loop time
    usable_until: float


def _cause(exc: UpstreamError | TimeoutError, url: str, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"{url} did not answer within {timeout:g} s"
    if isinstance(exc, CertificateRefused):
        return f"TLS verification of {url} failed: {exc}"
    if isinstance(exc, UpstreamUnreachable):
        return f"cannot connect to {url}"
    return f"request to {url} failed: {exc.label}"


def _json(answer: Fetched) -> Any:
    """The answer's JSON document, None if it is not JSON."""
    try:
        return json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        return None


class TokenSource:
    """Tokens for one (client_id, scopes) at one authorization server."""

    def __init__(
        self,
        config: OutboundTokenConfig,
        pool: OutboundPool,
        trust: Trust,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self.config = config
        self._pool = pool
        self._trust = trust
        self._connect_timeout = connect_timeout
        self._timeout = timeout  # for each call to the authorization server, in all
        self._endpoint = config.token_endpoint
        self._token: AccessToken | None = None
        self._flight: asyncio.Task[AccessToken] | None = None
        self._failure: tuple[float, TokenUnavailable] | None = None
        self.requests_made = 0  # token endpoint calls, for tests and diagnostics

    @property
    def label(self) -> str:
        scopes = " ".join(self.config.scopes) or "(default scopes)"
        return f"{self.config.client_id} [{scopes}]"

    # ----------------------------------------------------------------- callers

    async def get(self, material: ClientMaterial) -> str:
        """A token bound to ``material``'s certificate; raises TokenUnavailable."""
        for _ in range(2):
            loop = asyncio.get_running_loop()
            now = loop.time()
            token = self._token
            if token is not None and token.x5t_s256 != material.x5t_s256:
                # Bound to a certificate no longer presented (RFC 8705 §3).
                self._token = token = None
            if token is not None:
                if now < token.refresh_at:
                    return token.value
                if now < token.usable_until:
                    self._refresh_in_background()
                    return token.value
            token = await asyncio.shield(self._refresh())
            if token.x5t_s256 == material.x5t_s256:
                return token.value
            # The certificate rotated while the request ran; one more round.
        raise TokenUnavailable("the client certificate changed while a token was being requested")

    def forget(self, value: str) -> None:
        """The destination refused ``value`` (RFC 6750 §3.1): the next caller fetches anew.

        Many requests refused with the same token make one refresh: the first
        drops it, the rest find a newer token (or the refresh in flight).
        """
        token = self._token
        if token is not None and hmac.compare_digest(token.value, value):
            self._token = None

    async def close(self) -> None:
        if self._flight is not None:
            self._flight.cancel()
            with contextlib.suppress(BaseException):
                await self._flight

    # ------------------------------------------------------------ single flight

    def _refresh_in_background(self) -> None:
        if self._flight is None and self._recent_failure() is None:
            self._launch()

    def _refresh(self) -> asyncio.Task[AccessToken]:
        if self._flight is not None:
            return self._flight
        failure = self._recent_failure()
        if failure is not None:
            raise failure  # the endpoint just failed: answer at once, do not hammer it
        return self._launch()

    def _recent_failure(self) -> TokenUnavailable | None:
        if self._failure is None:
            return None
        at, exc = self._failure
        return exc if asyncio.get_running_loop().time() - at < FAILURE_BACKOFF_SECONDS else None

    def _launch(self) -> asyncio.Task[AccessToken]:
        task = asyncio.get_running_loop().create_task(
            self._fetch(), name=f"outbound-token {self.label}"
        )
        self._flight = task
        task.add_done_callback(self._landed)
        return task

    def _landed(self, task: asyncio.Task[AccessToken]) -> None:
        self._flight = None
        if not task.cancelled():
            task.exception()  # retrieved here: a background refresh has no awaiter

    async def _fetch(self) -> AccessToken:
        loop = asyncio.get_running_loop()
        # The certificate presented now is the one the token gets bound to.
        material = self._pool.material()
        try:
            endpoint = self._endpoint or await self._discover(material)
            started = loop.time()
            value, lifetime, scope = await self._request(material, endpoint)
        except TokenUnavailable as exc:
            self._failure = (loop.time(), exc)
            if self.config.issuer is not None:
                self._endpoint = None  # discover again next time: the server may have moved
            log.warning(
                "no access token for %s: %s",
                self.label,
                exc,
                extra={"event": "outbound_token_failed", "client_id": self.config.client_id},
            )
            raise
        self._failure = None
        lead = min(REFRESH_LEAD_SECONDS, REFRESH_FRACTION * lifetime)
        skew = min(EXPIRY_SKEW_SECONDS, lifetime / 10)
        token = AccessToken(
            value=value,
            x5t_s256=material.x5t_s256,
            refresh_at=started + lifetime - lead,
            usable_until=started + lifetime - skew,
        )
        self._token = token
        log.info(
            "access token obtained for %s",
            self.label,
            extra={
                "event": "outbound_token_obtained",
                "client_id": self.config.client_id,
                "scope": scope,
                "expires_in": lifetime,
                "token_endpoint": endpoint,
                "thumbprint": material.thumbprint,
            },
        )
        return token

    # -------------------------------------------------------------------- HTTP

    async def _call(
        self, material: ClientMaterial, url: str, form: dict[str, str] | None = None
    ) -> Fetched:
        """GET ``url``, or POST ``form`` to it; UpstreamError or TimeoutError on failure."""
        headers = [("Accept", "application/json")]
        body = None
        if form is not None:
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            body = urlencode(form).encode("ascii")
        return await fetch(
            self._pool.upstreams,
            url,
            method="GET" if form is None else "POST",
            headers=headers,
            body=body,
            tls=material.context(self._trust),
            connect_timeout=self._connect_timeout,
            within=self._timeout,
            limit=MAX_RESPONSE_BYTES,
        )

    async def _request(
        self, material: ClientMaterial, endpoint: str
    ) -> tuple[str, float, str | None]:
        form = {"grant_type": "client_credentials", "client_id": self.config.client_id}
        if self.config.scopes:
            form["scope"] = " ".join(self.config.scopes)  # RFC 6749 §3.3
        self.requests_made += 1
        try:
            answer = await self._call(material, endpoint, form)
        except (UpstreamError, TimeoutError) as exc:
            raise TokenUnavailable(_cause(exc, endpoint, self._timeout)) from None
        status, body = answer.status, _json(answer)
        if status != 200 or not isinstance(body, dict):
            # RFC 6749 §5.2: {"error": ..., "error_description": ...}
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                cause = f"{body['error']} from {endpoint}"
                description = body.get("error_description")
                if isinstance(description, str) and description:
                    cause += f": {description[:200]}"
                raise TokenUnavailable(cause)
            raise TokenUnavailable(f"HTTP {status} from {endpoint}")
        # RFC 6749 §5.1
        value = body.get("access_token")
        token_type = body.get("token_type")
        if not isinstance(value, str) or not value:
            raise TokenUnavailable(f"no access_token in the answer from {endpoint}")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenUnavailable(f"token_type {token_type!r} from {endpoint}: expected Bearer")
        expires_in = body.get("expires_in", DEFAULT_LIFETIME_SECONDS)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise TokenUnavailable(f"expires_in is not a number in the answer from {endpoint}")
        if expires_in <= 0:
            raise TokenUnavailable(f"an already expired token from {endpoint}")
        scope = body.get("scope")
        return value, float(expires_in), scope if isinstance(scope, str) else None

    async def _discover(self, material: ClientMaterial) -> str:
        issuer = self.config.issuer
        assert issuer is not None  # config: exactly one of token_endpoint and issuer
        last = ""
        for path in DISCOVERY_PATHS:
            url = issuer + path
            try:
                answer = await self._call(material, url)
            except (UpstreamError, TimeoutError) as exc:
                raise TokenUnavailable(f"discovery: {_cause(exc, url, self._timeout)}") from None
            if answer.status == 404:
                last = f"discovery: HTTP 404 from {url}"
                continue  # OpenID Connect's path first, then RFC 8414's
            document = _json(answer) if answer.status == 200 else None
            if answer.status == 200 and document is None:
                raise TokenUnavailable(f"discovery at {url}: not JSON")
            if not isinstance(document, dict):
                raise TokenUnavailable(f"discovery: HTTP {answer.status} from {url}")
            return self._token_endpoint_of(document, url)
        raise TokenUnavailable(last)

    def _token_endpoint_of(self, document: dict[str, Any], url: str) -> str:
        # RFC 8414 §3.3 / OIDC Discovery §4.3: the document must name the very
        # issuer asked for, or an attacker's metadata could redirect the
        # client's credentials (mix-up).
        if document.get("issuer") != self.config.issuer:
            raise TokenUnavailable(
                f"discovery at {url}: issuer {document.get('issuer')!r} is not {self.config.issuer!r}"
            )
        aliases = document.get("mtls_endpoint_aliases")
        endpoint = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
        endpoint = endpoint or document.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
            raise TokenUnavailable(f"discovery at {url}: no https token_endpoint")
        self._endpoint = endpoint
        return endpoint
