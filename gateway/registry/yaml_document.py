"""The registry document (``clients: [...]``): parsed as the gateway reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.config.reader import ConfigError, read_yaml_file
from gateway.registry.model import Client, ClientError, parse_client


def parse_registry_document(data: Any, source: str) -> list[Client]:
    """Clients of a registry document; ConfigError with ``file:key: message`` lines."""
    if data is None:
        data = {"clients": []}
    if not isinstance(data, dict) or set(data) - {"clients"}:
        raise ConfigError([f"{source}:<top>: expected a mapping with one key, 'clients'"])
    raw = data.get("clients") or []
    if not isinstance(raw, list):
        raise ConfigError([f"{source}:clients: expected a list of clients"])
    problems: list[str] = []
    clients: list[Client] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        name = item.get("client_id") if isinstance(item, dict) else None
        label = f" (client {name})" if isinstance(name, str) else ""
        try:
            client = parse_client(item)
        except ClientError as exc:
            problems += [f"{source}:clients[{i}].{p}{label}" for p in exc.problems]
            continue
        if client.client_id in seen:
            problems.append(
                f"{source}:clients[{i}].client_id: duplicate of clients[{seen[client.client_id]}]"
                f" ({client.client_id})"
            )
            continue
        seen[client.client_id] = i
        clients.append(client)
    if problems:
        raise ConfigError(problems)
    return clients


def load_registry_file(path: Path) -> list[Client]:
    return parse_registry_document(read_yaml_file(path), str(path))


def dump_registry_document(clients: list[Client]) -> str:
    return yaml.safe_dump(
        {"clients": [c.to_dict() for c in clients]}, sort_keys=False, allow_unicode=True
    )
