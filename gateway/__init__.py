"""mtls-gateway: mutual-TLS authentication gateway for legacy HTTP APIs."""

__version__ = "0.1.0"
