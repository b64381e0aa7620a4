"""``mtls-gateway quickstart``: a working gateway in one command.

Makes (or reuses) a dev PKI, a signing key, a config and a registry in one
directory, starts the built-in echo upstream and the gateway, and prints curl
lines that work when pasted.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from gateway.config import GatewayConfig, load_config
from gateway.devpki import DevPki, init_dev_pki
from gateway.echo import create_echo_app
from gateway.logs import configure_logging

GATEWAY_PORT = 8443
ADMIN_PORT = 9901
ECHO_PORT = 8081

CONFIG_TEMPLATE = """\
# Written by `mtls-gateway quickstart`; every key is documented in
# config/gateway.example.yaml.  Paths are relative to this file.
issuer: https://localhost:{gateway_port}
listeners:
  - bind: 127.0.0.1:{gateway_port}
    public_url: https://localhost:{gateway_port}
    tls:
      cert: pki/server.pem
      key: pki/server.key
      client_ca: pki/ca.pem
      pinned_certs: [pki/self-signed-client.pem]
      client_certs: optional
admin:
  bind: 127.0.0.1:{admin_port}
registry:
  kind: yaml
  path: clients.yaml
tokens:
  signing_keys: [keys/signing.pem]
  lifetime: 3600
routes:
  - prefix: /
    upstream: http://127.0.0.1:{echo_port}
    auth: client
logging:
  format: text
"""

REGISTRY_TEMPLATE = """\
# Clients, in IdentityServer's Client/Secret model (see config/clients.example.yaml).
clients:
  - client_id: mtls.client
    allowed_grant_types: [client_credentials]
    allowed_scopes: [api1]
    secrets:
      - type: X509CertificateName
        value: "{client_dn}"
        description: client.dn
  - client_id: mtls.self-signed
    allowed_grant_types: [client_credentials]
    allowed_scopes: [api1]
    secrets:
      - type: X509CertificateThumbprint
        value: {self_signed_thumbprint}
        description: mtls.tb
"""


def prepare(directory: Path) -> tuple[Path, DevPki]:
    """Create whatever is missing; reuse what exists."""
    from gateway.oauth.keys import generate_signing_key

    directory.mkdir(parents=True, exist_ok=True)
    pki = init_dev_pki(directory / "pki")
    key_path = directory / "keys" / "signing.pem"
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, exist_ok=True)
        generate_signing_key(key_path, "ES256")
    config_path = directory / "gateway.yaml"
    if not config_path.exists():
        config_path.write_text(
            CONFIG_TEMPLATE.format(
                gateway_port=GATEWAY_PORT, admin_port=ADMIN_PORT, echo_port=ECHO_PORT
            ),
            encoding="utf-8",
        )
    registry_path = directory / "clients.yaml"
    if not registry_path.exists():
        registry_path.write_text(
            REGISTRY_TEMPLATE.format(
                client_dn=pki.client.subject, self_signed_thumbprint=pki.self_signed.thumbprint
            ),
            encoding="utf-8",
        )
    return config_path, pki


def _display(path: Path) -> str:
    try:
        shown = str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        shown = str(path.resolve())
    return shlex.quote(shown)


def curl_lines(config: GatewayConfig, pki: DevPki) -> list[str]:
    base = config.listeners[0].public_url or f"https://localhost:{config.listeners[0].bind.port}"
    tls = f"--cacert {_display(pki.ca_cert)} --cert {_display(pki.client.cert)} --key {_display(pki.client.key)}"
    self_signed = (
        f"--cacert {_display(pki.ca_cert)} --cert {_display(pki.self_signed.cert)}"
        f" --key {_display(pki.self_signed.key)}"
    )
    return [
        "# 1. get a certificate-bound access token (client_credentials, RFC 8705):",
        f"curl {tls} -d grant_type=client_credentials -d client_id=mtls.client {base}/connect/token",
        "# 2. call the API through the gateway; the echo upstream shows the identity headers:",
        f"curl {tls} {base}/hello",
        "# 3. the same with the self-signed, thumbprint-pinned client:",
        f"curl {self_signed} {base}/hello",
        "# 4. without a client certificate: 401 with a JSON error",
        f"curl --cacert {_display(pki.ca_cert)} {base}/hello",
    ]


def _echo_port(config: GatewayConfig) -> int | None:
    for route in config.routes:
        parts = urlsplit(route.upstream)
        if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost"):
            return parts.port or 80
    return None


def run_quickstart(directory: Path, *, print_only: bool = False) -> int:
    config_path, pki = prepare(directory)
    config = load_config(config_path)
    print(f"mtls-gateway quickstart: files in {directory.resolve()}")
    print(
        f"  config   {config_path}\n  clients  {directory / 'clients.yaml'}\n  PKI      {pki.directory}"
    )
    print("\nTry these from another terminal:\n")
    print("\n".join(curl_lines(config, pki)))
    print()
    if print_only:
        return 0
    configure_logging(config.logging)
    return _serve_with_echo(config)


def _serve_with_echo(config: GatewayConfig) -> int:
    from gateway.runtime import assemble
    from gateway.server import serve_forever

    gateway = assemble(config)

    async def main() -> int:
        echo_runner: web.AppRunner | None = None
        port = _echo_port(config)
        if port is not None:
            echo_runner = web.AppRunner(create_echo_app(), access_log=None, auto_decompress=False)
            await echo_runner.setup()
            await web.TCPSite(echo_runner, "127.0.0.1", port).start()
            print(f"echo upstream on http://127.0.0.1:{port}; Ctrl-C stops everything", flush=True)
        try:
            await serve_forever(gateway, grace=2.0)
        finally:
            if echo_runner is not None:
                await echo_runner.cleanup()
        return 0

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
