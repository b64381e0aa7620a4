"""Command line: ``mtls-gateway <command>``.

A user's mistake (bad flag, bad config, missing file) is one line on stderr
naming the file, key or client at fault, and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from gateway import __version__
from gateway.cli.devpki import init_dev_pki
from gateway.cli.devpki_issue import DevPkiError
from gateway.config.load import GatewayConfig, load_config
from gateway.config.reader import ConfigError
from gateway.oauth.keys import SigningKeyError
from gateway.registry.base import RegistryUnavailable
from gateway.registry.model import Client

T = TypeVar("T")


class UserError(Exception):
    """Reported as one line (or one line per problem), exit 1."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse exits 2 with a usage block; our contract is one line, exit 1.
        command = self.prog.removeprefix("mtls-gateway").strip()
        raise UserError(f"{command + ': ' if command else ''}{message} (see --help)")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --------------------------------------------------------------------- commands


def _load(path: str) -> GatewayConfig:
    return load_config(path)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.supervisor import serve

    config = _load(args.config)
    return serve(config, workers=args.workers)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.cli.check import config_findings, registry_findings
    from gateway.registry.dn_order import config_dn_order_warnings as dn_order_warnings
    from gateway.runtime import assemble

    config = _load(args.config)
    gateway = assemble(config)
    found = config_findings(config)

    async def read_clients() -> list[Client]:
        try:
            return list(await gateway.registry.list_clients())
        finally:
            await gateway.registry.close()

    clients = _run(read_clients())
    registry_findings(config, gateway.registry, clients, found)
    found.warnings += dn_order_warnings(config, clients)
    for listener in gateway.listeners:
        found.warnings += listener.tls.material.ignored_pins
    for warning in found.warnings:
        print(f"mtls-gateway: warning: {warning}", file=sys.stderr)
    if found.problems:
        raise UserError(*found.problems)
    count = len(clients)
    listeners = ", ".join(
        f"{ls.bind} ({ls.tls.client_certs} client certs)" for ls in config.listeners
    )
    outbound = ""
    if config.outbound:
        bound = ", ".join(str(ob.bind) for ob in config.outbound)
        outbound = f" {len(config.outbound)} outbound listener(s) [{bound}],"
    admin = (
        f" admin on {config.admin.bind}," if config.admin.bind is not None else " no admin port,"
    )
    print(
        f"{config.source}: ok: {len(config.listeners)} listener(s) [{listeners}],{outbound}"
        f"{admin} {count} client(s) in {gateway.registry.description}"
    )
    return 0


def cmd_certs_init(args: argparse.Namespace) -> int:
    pki = init_dev_pki(Path(args.dir), reuse=not args.force)
    print(f"{'created' if pki.created else 'reused'} dev PKI in {pki.directory}")
    print(f"  CA:          {pki.ca_cert}")
    print(f"  server:      {pki.server_cert} (localhost, 127.0.0.1, ::1)")
    for label, client in (("client", pki.client), ("self-signed", pki.self_signed)):
        print(f"  {label + ':':<12} {client.cert}")
        print(f"               subject    {client.subject}")
        print(f"               thumbprint {client.thumbprint}")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from gateway.oauth.keys import generate_signing_key

    path = Path(args.file)
    try:
        # Like the quickstart's keys/: only the owner may list the directory.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the directory: {exc.strerror}") from None
    key = generate_signing_key(path, args.alg, overwrite=args.force)
    print(f"wrote {args.alg} signing key {key.path} (kid {key.kid}, mode 0600)")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from gateway.cli.quickstart import Ports, run_quickstart

    given = (args.port, args.admin_port, args.echo_port)
    ports = None
    if any(port is not None for port in given):
        default = Ports()
        ports = Ports(
            gateway=args.port or default.gateway,
            admin=args.admin_port or default.admin,
            echo=args.echo_port or default.echo,
        )
        if len({ports.gateway, ports.admin, ports.echo}) != 3:
            raise UserError("quickstart: --port, --admin-port and --echo-port must differ")
    return run_quickstart(
        Path(args.dir), print_only=args.no_serve, outbound=args.outbound, ports=ports
    )


def cmd_clients(args: argparse.Namespace) -> int:
    from gateway.cli.clients import run_clients_command

    return _run(run_clients_command(_load(args.config), args))


# --------------------------------------------------------------------- parser


def described(
    sub: argparse._SubParsersAction[Any], name: str, summary: str, description: str, *examples: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows how it is called."""
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples) if examples else None
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtls-gateway",
        description="Mutual-TLS authentication gateway with certificate-bound OAuth tokens.",
        epilog="examples:\n  mtls-gateway quickstart\n  mtls-gateway check --config gateway.yaml\n"
        "  mtls-gateway serve --config gateway.yaml --workers 2\n"
        "Each command has its own --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mtls-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = described(
        sub,
        "quickstart",
        "dev PKI, key, config and echo upstream; then serve",
        "Create (or reuse) a development PKI, a signing key, gateway.yaml and clients.yaml "
        "in one directory, start a built-in echo upstream and the gateway on loopback, and "
        "print curl lines that work when pasted into another terminal.",
        "mtls-gateway quickstart",
        "mtls-gateway quickstart --port 9443 --admin-port 9911 --echo-port 9081",
        "mtls-gateway quickstart --dir demo --no-serve",
    )
    p.add_argument(
        "--dir", default="gateway-demo", help="working directory (default ./gateway-demo)"
    )
    p.add_argument("--no-serve", action="store_true", help="prepare files and print commands only")
    p.add_argument("--port", type=_port, help="the gateway's HTTPS port (default 8443)")
    p.add_argument("--admin-port", type=_port, help="the admin port (default 9901)")
    p.add_argument("--echo-port", type=_port, help="the demo echo upstream's port (default 8081)")
    p.add_argument(
        "--outbound",
        action="store_true",
        help="also run a second gateway whose outbound listener (127.0.0.1:15001) calls the first",
    )
    p.set_defaults(func=cmd_quickstart)

    p = described(
        sub,
        "serve",
        "run the gateway",
        "Run the gateway until SIGTERM or SIGINT (graceful: /readyz fails first, in-flight "
        "requests finish). SIGHUP re-reads every file; a file that fails keeps what runs.",
        "mtls-gateway serve --config gateway.yaml",
        "MTLS_GATEWAY_LISTENERS__0__BIND=0.0.0.0:8443 mtls-gateway serve --config gateway.yaml",
        "mtls-gateway serve --config gateway.yaml --workers 4",
    )
    p.add_argument("--config", required=True, help="gateway YAML config")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes sharing the ports")
    p.set_defaults(func=cmd_serve)

    p = described(
        sub,
        "check",
        "validate config, files and registry",
        "Load the config, every file it names and the registry as serve would, and print "
        "one line per problem (file:key: message, exit 1) or one ok line (exit 0). Choices "
        "that are sometimes deliberate are printed as warnings.",
        "mtls-gateway check --config gateway.yaml",
    )
    p.add_argument("--config", required=True, help="gateway YAML config")
    p.set_defaults(func=cmd_check)

    certs = described(
        sub,
        "certs",
        "development certificates",
        "Development certificates: see `mtls-gateway certs init --help`.",
        "mtls-gateway certs init pki",
    )
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, parser_class=_Parser)
    p = described(
        certs_sub,
        "init",
        "create a dev CA, server and client certificates",
        "Write a development CA, a server certificate for localhost, a CA-issued client "
        "certificate and a self-signed one into DIR (reused when present). Not for production.",
        "mtls-gateway certs init pki",
        "mtls-gateway certs init pki --force",
    )
    p.add_argument("dir", help="directory for the PEM files (created if missing)")
    p.add_argument("--force", action="store_true", help="regenerate even if files exist")
    p.set_defaults(func=cmd_certs_init)

    keys = described(
        sub,
        "keys",
        "token signing keys",
        "Token signing keys: see `mtls-gateway keys generate --help`.",
        "mtls-gateway keys generate keys/signing.pem",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    p = described(
        keys_sub,
        "generate",
        "write a new signing key (PKCS#8 PEM, mode 0600)",
        "Write a new token signing key. Its directory is created (mode 0700) if missing; an "
        "existing key is never overwritten without --force.",
        "mtls-gateway keys generate keys/signing.pem",
        "mtls-gateway keys generate keys/next.pem --alg RS256",
    )
    p.add_argument("file", help="where to write the key")
    p.add_argument("--alg", choices=("ES256", "RS256", "PS256", "EdDSA"), default="ES256")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_keys_generate)

    from gateway.cli.clients import add_clients_parser

    add_clients_parser(sub, cmd_clients)
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    handlers: dict[type[BaseException], Callable[[BaseException], list[str]]] = {
        UserError: lambda e: list(e.lines),  # type: ignore[attr-defined]
        ConfigError: lambda e: list(e.problems),  # type: ignore[attr-defined]
        DevPkiError: lambda e: [str(e)],
    }
    handlers[SigningKeyError] = lambda e: [str(e)]
    # Redis down during `clients …` or `check`: say so in one line, exit 1.
    handlers[RegistryUnavailable] = lambda e: [f"registry unavailable: {e}"]
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except tuple(handlers) as exc:
        for kind, render in handlers.items():
            if isinstance(exc, kind):
                for line in render(exc):
                    print(f"mtls-gateway: {line}", file=sys.stderr)
                break
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return 1
