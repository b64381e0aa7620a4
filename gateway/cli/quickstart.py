"""``mtls-gateway quickstart``: a working gateway in one command.

Makes (or reuses) a dev PKI, a signing key, a config and a registry in one
directory, starts the built-in echo upstream and the gateway, and prints curl
lines that work when pasted.  Everything is bound before anything is printed,
so a busy port is one line naming the flag that moves it, never a page of
instructions followed by ``address already in use``.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from aiohttp import web

from gateway.cli.devpki import DevPki, init_dev_pki
from gateway.cli.echo import create_echo_app
from gateway.config.load import GatewayConfig, load_config
from gateway.config.reader import ConfigError
from gateway.ops.logs import configure_logging

GATEWAY_PORT = 8443
ADMIN_PORT = 9901
ECHO_PORT = 8081


@dataclass(frozen=True)
class Ports:
    """The quickstart's three ports; ``--port``, ``--admin-port``, ``--echo-port``."""

    gateway: int = GATEWAY_PORT
    admin: int = ADMIN_PORT
    echo: int = ECHO_PORT


# Which flag moves the port a bind error names (the key in ConfigError's line).
_FLAG_FOR_KEY = {"listeners[0].bind": "--port", "admin.bind": "--admin-port"}

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
  # A bearer token from /connect/token, bound to the certificate that fetched it.
  - prefix: /api
    upstream: http://127.0.0.1:{echo_port}
    auth: token
    scopes: [api1]
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


# `quickstart --outbound`: a second gateway in the same process, the caller.
CALLER_PORT = 8444
CALLER_ADMIN_PORT = 9902
OUTBOUND_PORT = 15001

OUTBOUND_TEMPLATE = """\
# Written by `mtls-gateway quickstart --outbound`: a second gateway, the caller.
# Its outbound listener takes plain HTTP from a local app on
# 127.0.0.1:{outbound_port} and calls the first gateway (gateway.yaml,
# https://localhost:{gateway_port}) over mTLS with pki/client.pem, attaching a
# token bound to that certificate which it obtains there (docs/outbound.md).
# Every gateway config has an inbound side too; this one's is a second door
# to the echo upstream that the demo does not use.
issuer: https://localhost:{caller_port}
listeners:
  - bind: 127.0.0.1:{caller_port}
    public_url: https://localhost:{caller_port}
    tls:
      cert: pki/server.pem
      key: pki/server.key
      client_ca: pki/ca.pem
admin:
  bind: 127.0.0.1:{caller_admin_port}
registry:
  kind: yaml
  path: clients.yaml
tokens:
  signing_keys: [keys/signing.pem]
routes:
  - prefix: /
    upstream: http://127.0.0.1:{echo_port}
    auth: client
outbound:
  - bind: 127.0.0.1:{outbound_port}
    destination: https://localhost:{gateway_port}
    tls:
      cert: pki/client.pem
      key: pki/client.key
      ca: pki/ca.pem
    token:
      issuer: https://localhost:{gateway_port}
      client_id: mtls.client
      scopes: [api1]
logging:
  format: text
"""


def _ports_in(config_path: Path) -> Ports | None:
    """The ports a quickstart config was written for (None: not one of ours)."""
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        gateway = int(data["listeners"][0]["bind"].rpartition(":")[2])
        admin = int(data["admin"]["bind"].rpartition(":")[2])
        echo = urlsplit(data["routes"][-1]["upstream"]).port
    except (OSError, yaml.YAMLError, LookupError, TypeError, ValueError, AttributeError):
        return None
    return Ports(gateway, admin, echo or 80)


def prepare(directory: Path, ports: Ports | None = None) -> tuple[Path, DevPki, list[str]]:
    """Create whatever is missing; reuse what exists.

    With ``ports`` (flags given), gateway.yaml is written again when it was
    made for other ports; the notes say so.
    """
    from gateway.oauth.keys import generate_signing_key

    notes: list[str] = []
    directory.mkdir(parents=True, exist_ok=True)
    pki = init_dev_pki(directory / "pki")
    key_path = directory / "keys" / "signing.pem"
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, exist_ok=True)
        generate_signing_key(key_path, "ES256")
    config_path = directory / "gateway.yaml"
    wanted = ports or Ports()
    written_for = _ports_in(config_path) if config_path.exists() else None
    if not config_path.exists() or (ports is not None and written_for != ports):
        if config_path.exists():
            notes.append(f"rewrote {config_path} for the ports given")
        config_path.write_text(
            CONFIG_TEMPLATE.format(
                gateway_port=wanted.gateway, admin_port=wanted.admin, echo_port=wanted.echo
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
    return config_path, pki, notes


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
        "# 5. a token-protected route (auth: token): fetch a token into $TOKEN, then send it",
        "#    with the same certificate (the token is bound to it, RFC 8705 §3):",
        f"TOKEN=$(curl -s {tls} -d grant_type=client_credentials -d client_id=mtls.client"
        f" {base}/connect/token | {_JSON_FIELD_READER})",
        f'curl {tls} -H "Authorization: Bearer $TOKEN" {base}/api/hello',
    ]


# Read access_token from the JSON answer without jq (python3 is there: it ran this).
_JSON_FIELD_READER = "python3 -c 'import json, sys; print(json.load(sys.stdin)[\"access_token\"])'"


def prepare_outbound(directory: Path, ports: Ports | None = None) -> Path:
    """The caller's config next to the quickstart's (after prepare()); reused when present."""
    path = directory / "outbound.yaml"
    gateway_port = (ports or Ports()).gateway
    stale = (
        ports is not None
        and path.exists()
        and f"localhost:{gateway_port}\n" not in (path.read_text(encoding="utf-8"))
    )
    if not path.exists() or stale:
        path.write_text(
            OUTBOUND_TEMPLATE.format(
                gateway_port=gateway_port,
                caller_port=CALLER_PORT,
                caller_admin_port=CALLER_ADMIN_PORT,
                outbound_port=OUTBOUND_PORT,
                echo_port=(ports or Ports()).echo,
            ),
            encoding="utf-8",
        )
    return path


def outbound_curl_lines(caller: GatewayConfig) -> list[str]:
    if not caller.outbound:
        return []
    bind = caller.outbound[0].bind
    host = f"[{bind.host}]" if ":" in bind.host else bind.host
    return [
        "# 6. plain HTTP to the second gateway's outbound listener: it calls the first over",
        "#    mTLS with pki/client.pem and a bound token it obtained there (the echo shows both):",
        f"curl http://{host}:{bind.port}/hello",
    ]


def _echo_port(config: GatewayConfig) -> int | None:
    for route in config.routes:
        parts = urlsplit(route.upstream)
        if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost"):
            return parts.port or 80
    return None


def run_quickstart(
    directory: Path,
    *,
    print_only: bool = False,
    outbound: bool = False,
    ports: Ports | None = None,
) -> int:
    config_path, pki, notes = prepare(directory, ports)
    config = load_config(config_path)
    caller_path = prepare_outbound(directory, ports) if outbound else None
    caller = load_config(caller_path) if caller_path is not None else None

    def announce() -> None:
        print(f"mtls-gateway quickstart: files in {directory.resolve()}")
        for note in notes:
            print(f"  ({note})")
        print(
            f"  config   {config_path}\n  clients  {directory / 'clients.yaml'}\n"
            f"  PKI      {pki.directory}"
        )
        if caller_path is not None:
            print(f"  caller   {caller_path}")
        print("\nTry these from another terminal:\n")
        lines = curl_lines(config, pki)
        if caller is not None:
            lines += outbound_curl_lines(caller)
        print("\n".join(lines))
        print(flush=True)

    if print_only:
        announce()
        return 0
    configure_logging(config.logging)
    return _serve_with_echo(config, announce, callers=[caller] if caller is not None else [])


def _bind_error(exc: ConfigError, what: str) -> ConfigError:
    """The first bind failure, as one line naming the flag that moves the port."""
    line = exc.problems[0]
    for key, flag in _FLAG_FOR_KEY.items():
        if f":{key}: " in line and what == "gateway":
            return ConfigError([f"{line}; choose another port with {flag} N"])
    if what == "caller":
        line += " (the --outbound caller's ports are fixed: 8444, 9902, 15001)"
    return ConfigError([line])


def _serve_with_echo(
    config: GatewayConfig,
    announce: Callable[[], None],
    callers: Sequence[GatewayConfig] = (),
) -> int:
    from gateway.runtime import assemble
    from gateway.server import RunningGateway, start_gateway

    gateway = assemble(config)
    others = [assemble(caller) for caller in callers]

    async def main() -> int:
        echo_runner: web.AppRunner | None = None
        port = _echo_port(config)
        running: list[RunningGateway] = []
        try:
            if port is not None:
                echo_runner = web.AppRunner(
                    create_echo_app(), access_log=None, auto_decompress=False
                )
                await echo_runner.setup()
                try:
                    await web.TCPSite(echo_runner, "127.0.0.1", port).start()
                except OSError as exc:
                    raise ConfigError(
                        [
                            f"cannot listen on 127.0.0.1:{port} for the echo upstream: "
                            f"{exc.strerror or exc}; choose another port with --echo-port N"
                        ]
                    ) from None
            try:
                running.append(await start_gateway(gateway))
            except ConfigError as exc:
                raise _bind_error(exc, "gateway") from None
            # The callers' outbound tokens are fetched on first use, by which
            # time the first gateway listens.
            for other in others:
                try:
                    running.append(await start_gateway(other))
                except ConfigError as exc:
                    raise _bind_error(exc, "caller") from None
            # Everything is bound: only now is the advice true.
            announce()
            if port is not None:
                print(f"echo upstream on http://127.0.0.1:{port}", flush=True)
            for started in running[1:]:
                for host, bound in started.outbound_addresses:
                    print(f"caller's outbound listener on http://{host}:{bound}", flush=True)
            print("Ctrl-C stops everything", flush=True)
            await _until_stopped()
        finally:
            for started in reversed(running):
                await started.stop(grace=1.0)
            if echo_runner is not None:
                await echo_runner.cleanup()
        return 0

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


async def _until_stopped() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
