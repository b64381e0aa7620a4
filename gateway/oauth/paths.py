"""Where the OAuth surface lives on every listener (IdentityServer's paths, so
that its clients' configuration carries over)."""

from __future__ import annotations

OPENID_CONFIGURATION = "/.well-known/openid-configuration"
OAUTH_SERVER_METADATA = "/.well-known/oauth-authorization-server"  # RFC 8414 §3
JWKS = "/.well-known/openid-configuration/jwks"
TOKEN = "/connect/token"  # noqa: S105 (a path, not a secret)
INTROSPECT = "/connect/introspect"
# RFC 8705 §5 aliases: the same handlers; a deployment that terminates mTLS on
# a separate host or path can advertise these while token_endpoint stays plain.
MTLS_TOKEN = "/connect/mtls/token"  # noqa: S105
MTLS_INTROSPECT = "/connect/mtls/introspect"
