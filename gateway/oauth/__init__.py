"""OAuth 2.0: token-signing keys and certificate-bound access tokens."""
