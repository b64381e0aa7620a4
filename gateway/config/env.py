"""``MTLS_GATEWAY_<PATH>`` environment variables, applied to the YAML tree before it is read.

``MTLS_GATEWAY_<PATH>`` overrides any value, with ``__`` between levels and
list indexes as numbers (``MTLS_GATEWAY_LISTENERS__0__BIND=0.0.0.0:8443``);
values are read as YAML scalars, so ``true``, ``3600`` and ``[a, b]`` work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from gateway.config.reader import kind_of

ENV_PREFIX = "MTLS_GATEWAY_"


def apply_env_overrides(
    data: dict[str, Any],
    env: Mapping[str, str],
    origins: dict[tuple[int, str], str] | None = None,
) -> list[str]:
    """Apply ``MTLS_GATEWAY_A__B__0__C`` variables in place; return problems.

    ``origins`` learns which mapping key each variable set ((id of the
    mapping, key) -> variable name), so a misspelt key is reported as the
    environment variable it came from, not as a key of the file.
    """
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            problems.append(f"env:{name}: malformed variable name")
            continue
        try:
            value = yaml.safe_load(env[name])
        except (yaml.YAMLError, RecursionError):
            value = env[name]
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"env:{name}: no list item {part!r} to override")
                    break
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if origins is not None and part not in node:
                    origins[(id(node), part)] = name
                if last:
                    node[part] = value
                elif node.get(part) is None:
                    # Absent, or present but empty (``admin:`` with its keys
                    # commented out): both read as an empty mapping.
                    child: dict[str, Any] = {}
                    node[part] = child
                    node = child
                else:
                    node = node[part]
            else:
                # kind_of() already says "a string", "a list", ...
                problems.append(f"env:{name}: cannot override inside {kind_of(node)}")
                break
    return problems
