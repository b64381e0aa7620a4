"""``mtls-gateway clients …``: manage the registry the config names (YAML or Redis)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gateway.config.load import GatewayConfig
from gateway.config.reader import ConfigError, read_yaml_file
from gateway.registry.base import RegistryWriteError, WritableRegistry
from gateway.registry.dn_order import config_dn_order_warnings
from gateway.registry.factory import create_registry
from gateway.registry.model import Client, ClientError, parse_client
from gateway.registry.yaml_file import dump_registry_document, parse_registry_document

_SECRET_FLAGS = {
    "dn": "X509CertificateName",
    "thumbprint": "X509CertificateThumbprint",
    "san_dns": "X509SanDns",
    "san_uri": "X509SanUri",
    "san_ip": "X509SanIp",
    "san_email": "X509SanEmail",
}


def add_clients_parser(
    sub: argparse._SubParsersAction[Any], handler: Callable[[argparse.Namespace], int]
) -> None:
    from gateway.cli.main import described

    clients = described(
        sub,
        "clients",
        "manage the client registry",
        "List, show, add, remove, import and export the clients of the registry the "
        "config names (YAML file or Redis).",
        "mtls-gateway clients list --config gateway.yaml",
    )
    clients_sub = clients.add_subparsers(
        dest="clients_command", required=True, parser_class=type(clients)
    )

    def command(name: str, help_text: str, *examples: str) -> argparse.ArgumentParser:
        p = described(
            clients_sub, name, help_text, help_text[0].upper() + help_text[1:] + ".", *examples
        )
        p.add_argument("--config", required=True, help="gateway YAML config")
        p.set_defaults(func=handler)
        return p

    command("list", "one line per client", "mtls-gateway clients list --config gateway.yaml")
    command(
        "show",
        "one client in registry (YAML) form",
        "mtls-gateway clients show mtls.client --config gateway.yaml",
    ).add_argument("client_id", help="the client to show")
    p = command(
        "add",
        "add or replace a client (flags, or --from-file)",
        "mtls-gateway clients add orders --config gateway.yaml --scope api1 "
        "--dn 'CN=orders, O=company'",
        "mtls-gateway clients add --config gateway.yaml --from-file client.yaml",
    )
    p.add_argument("client_id", nargs="?", help="the new client's id (or from --from-file)")
    p.add_argument("--from-file", help="YAML snippet with one client (- for stdin)")
    p.add_argument("--scope", action="append", default=[], help="allowed scope (repeat)")
    for flag, kind in _SECRET_FLAGS.items():
        p.add_argument(
            f"--{flag.replace('_', '-')}",
            action="append",
            default=[],
            help=f"{kind} secret (repeat)",
        )
    p.add_argument("--issuer", help="DN of the CA that must have issued the certificate")
    p.add_argument("--lifetime", type=int, help="access token lifetime in seconds")
    p.add_argument("--disabled", action="store_true")
    p.add_argument("--replace", action="store_true", help="replace an existing client")
    command(
        "remove", "remove a client", "mtls-gateway clients remove orders --config gateway.yaml"
    ).add_argument("client_id", help="the client to remove")
    p = command(
        "import",
        "add clients from a registry YAML file or an IdentityServer export",
        "mtls-gateway clients import clients.yaml --config gateway.yaml --dry-run",
        "mtls-gateway clients import export.json --format identityserver --config gateway.yaml",
    )
    p.add_argument("file", help="registry YAML (clients: [...]); - for stdin")
    p.add_argument("--replace-all", action="store_true", help="drop clients not in the file")
    p.add_argument(
        "--format",
        choices=("registry", "identityserver"),
        default="registry",
        help="registry: this gateway's YAML; identityserver: IdentityServer clients "
        "as a JSON export, EF entities, or an appsettings.json with an "
        "IdentityServer:Clients section (what cannot carry over is listed)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the result; write nothing")
    p.add_argument("--report", help="write the not-carried-over list here instead of stderr")
    p = command(
        "export",
        "write the registry as YAML",
        "mtls-gateway clients export backup.yaml --config gateway.yaml",
    )
    p.add_argument("file", nargs="?", help="output file (default stdout)")


def _read_document(source: str) -> Any:
    if source == "-":
        try:
            return yaml.safe_load(sys.stdin.read())
        except yaml.YAMLError as exc:
            raise ConfigError([f"<stdin>: invalid YAML: {exc}"]) from None
    return read_yaml_file(Path(source))


def _client_from_flags(args: argparse.Namespace) -> Client:
    flags: list[str] = []  # secrets[i] came from flags[i]: problems name the flag
    if args.from_file:
        data = _read_document(args.from_file)
        if isinstance(data, dict) and "clients" in data:
            clients = parse_registry_document(data, args.from_file)
            if len(clients) != 1:
                raise ConfigError([f"{args.from_file}: expected exactly one client"])
            return clients[0]
    else:
        if not args.client_id:
            raise ConfigError(["clients add: give a client_id, or --from-file"])
        secrets = []
        for flag, kind in _SECRET_FLAGS.items():
            for value in getattr(args, flag):
                secrets.append({"type": kind, "value": value})
                flags.append(f"--{flag.replace('_', '-')}")
        data = {
            "client_id": args.client_id,
            "allowed_scopes": args.scope,
            "secrets": secrets,
            "enabled": not args.disabled,
        }
        if args.issuer:
            data["issuer"] = args.issuer
        if args.lifetime is not None:
            data["access_token_lifetime"] = args.lifetime
    label = data.get("client_id", "?") if isinstance(data, dict) else "?"
    try:
        return parse_client(data)
    except ClientError as exc:
        problems = [_flag_problem(p, flags) for p in exc.problems]
        raise ConfigError([f"client {label}: {p}" for p in problems]) from None


def _flag_problem(problem: str, flags: list[str]) -> str:
    """``secrets[1].value: …`` → ``--thumbprint: …``: the key the user typed."""
    match = re.match(r"secrets\[(\d+)\]\.value: ", problem)
    if match is None or int(match[1]) >= len(flags):
        return problem
    return f"{flags[int(match[1])]}: {problem[match.end() :]}"


async def run_clients_command(config: GatewayConfig, args: argparse.Namespace) -> int:
    registry: WritableRegistry = create_registry(config.registry)
    try:
        return await _dispatch(registry, args, config)
    except RegistryWriteError as exc:
        raise ConfigError([str(exc)]) from None
    finally:
        await registry.close()


async def _dispatch(
    registry: WritableRegistry, args: argparse.Namespace, config: GatewayConfig
) -> int:
    command = args.clients_command
    if command == "list":
        clients = await registry.list_clients()
        if not clients:
            # On stderr: stdout stays one line per client (empty) for scripts.
            print(
                f"no clients in {registry.description} (add one: mtls-gateway clients add --help)",
                file=sys.stderr,
            )
        for c in sorted(clients, key=lambda c: c.client_id):
            kinds = ",".join(sorted({s.type.removeprefix("X509") for s in c.secrets}))
            state = "enabled " if c.enabled else "disabled"
            print(
                f"{c.client_id}\t{state}\tscopes={' '.join(c.allowed_scopes) or '-'}\tsecrets={kinds}"
            )
        return 0
    if command == "show":
        client = await registry.get(args.client_id)
        if client is None:
            raise ConfigError([f"client {args.client_id}: not found in {registry.description}"])
        print(yaml.safe_dump(client.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return 0
    if command == "add":
        client = _client_from_flags(args)
        # Decided with the write, under the lock (YAML) or in the script (Redis).
        await registry.put(client, replace=args.replace)
        print(f"added {client.client_id} to {registry.description}")
        # Added all the same: a CA may really issue names in that order.
        for line in config_dn_order_warnings(config, [client]):
            print(f"mtls-gateway: warning: {line}", file=sys.stderr)
        return 0
    if command == "remove":
        if not await registry.remove(args.client_id):
            raise ConfigError([f"client {args.client_id}: not found in {registry.description}"])
        print(f"removed {args.client_id} from {registry.description}")
        return 0
    if command == "import":
        if args.format == "identityserver":
            incoming = _identityserver_clients(args)
        else:
            incoming = parse_registry_document(_read_document(args.file), args.file)
        if args.dry_run:
            sys.stdout.write(dump_registry_document(incoming))
            return 0
        if args.replace_all:
            await registry.replace_all(incoming)
        else:
            await registry.merge(incoming)
        print(f"imported {len(incoming)} client(s) into {registry.description}")
        return 0
    if command == "export":
        text = dump_registry_document(
            sorted(await registry.list_clients(), key=lambda c: c.client_id)
        )
        if args.file:
            _write_text(Path(args.file), text)
        else:
            sys.stdout.write(text)
        return 0
    raise ConfigError([f"clients: unknown command {command!r}"])


def _identityserver_clients(args: argparse.Namespace) -> list[Client]:
    """Convert an IdentityServer export; list what did not carry over (never silently)."""
    from gateway.registry.identityserver import IdentityServerFormatError, import_identityserver
    from gateway.registry.identityserver_document import parse_json

    source = args.file
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read: {exc}"]) from None
    try:
        result = import_identityserver(parse_json(text))  # appsettings.json: comments allowed
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{source}:line {exc.lineno}: invalid JSON: {exc.msg}"]) from None
    except IdentityServerFormatError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    lines = [f"{source}: {line}" for line in result.report]
    summary = (
        f"{source}: {len(result.clients)} client(s) converted"
        f"{' from ' + result.section if result.section else ''}, {len(result.skipped)} skipped"
        f"{' (' + ', '.join(result.skipped) + ')' if result.skipped else ''}, "
        f"{len(result.report)} item(s) not carried over as they were"
    )
    if args.report:
        _write_text(Path(args.report), "".join(f"{line}\n" for line in [*lines, summary]))
    else:
        for line in lines:
            print(line, file=sys.stderr)
    print(summary, file=sys.stderr)
    return result.clients


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot write: {exc.strerror or exc}"]) from None
