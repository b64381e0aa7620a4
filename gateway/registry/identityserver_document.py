"""Where the clients are in an IdentityServer document, and reading its JSON.

Users keep their IdentityServer clients in one of three shapes:

* a JSON array of ``Client`` objects (an export, or the EF ``Clients`` table);
* an object with ``Clients`` (``{"Clients": [...]}``);
* an ASP.NET ``appsettings.json``, where the clients are the configuration
  section ``IdentityServer:Clients`` (Duende's and IdentityServer4's samples),
  often nested deeper (``{"Auth": {"IdentityServer": {"Clients": [...]}}}``)
  or written with the flattened key (``"IdentityServer:Clients": [...]``).

ASP.NET reads ``appsettings.json`` with comments and trailing commas allowed
(System.Text.Json ``JsonCommentHandling.Skip``, ``AllowTrailingCommas``), so
such a file is read the same way rather than refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

MAX_DEPTH: Final = 32  # configuration sections nest a few levels; a bound keeps it cheap
_SEPARATORS: Final = re.compile(r":|__")  # .NET configuration key paths (":", env "__")


class DocumentError(ValueError):
    """Not a document with IdentityServer clients in it; the message says why."""


def parse_json(text: str) -> Any:
    """JSON as ASP.NET configuration reads it: // and /* */ comments, trailing commas.

    Raises json.JSONDecodeError; its line numbers are those of ``text``
    (comments are blanked, not removed, so lines stay where they were).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        relaxed = _without_trailing_commas(_without_comments(text))
        if relaxed == text:
            raise
    return json.loads(relaxed)


def _without_comments(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
            continue
        if ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end == -1 else end + 2
            # Keep the newlines, so decode errors still name the right line.
            out.append("".join(c if c == "\n" else " " for c in text[i:end]))
            i = end
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _without_trailing_commas(text: str) -> str:
    out: list[str] = []
    in_string = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            in_string = ch != '"'
            i += 1
            continue
        if ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "]}":
                out.append(" ")
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _as_list(value: Any) -> list[Any] | None:
    """A JSON array, or .NET configuration's array form ``{"0": ..., "1": ...}``."""
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping) and value and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=lambda k: int(str(k)))]
    return None


def _sections(document: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """Every ``…:Clients`` list in a configuration tree, with its section path."""
    found: list[tuple[str, list[Any]]] = []

    def walk(node: Mapping[str, Any], path: list[str], depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        for key, value in node.items():
            segments = [s for s in _SEPARATORS.split(str(key)) if s]
            here = [*path, *segments]
            clients = _as_list(value)
            if segments and segments[-1].lower() == "clients" and clients is not None:
                found.append((":".join(here), clients))
            elif isinstance(value, Mapping):
                walk(value, here, depth + 1)

    walk(document, [], 0)
    return found


def locate_clients(document: Any) -> tuple[list[Any], str]:
    """The client list, and where it was (``""`` for a bare array, else its path)."""
    if isinstance(document, list):
        return document, ""
    if not isinstance(document, Mapping):
        raise DocumentError(_EXPECTED)
    found = _sections(document)
    if len(found) > 1:
        # Other sections may be called Clients too; IdentityServer's is the one.
        preferred = [
            (path, clients)
            for path, clients in found
            if "identityserver" in path.lower().split(":")
        ]
        found = preferred or found
    if not found:
        raise DocumentError(_EXPECTED)
    if len(found) > 1:
        paths = ", ".join(path for path, _ in found)
        raise DocumentError(f"several client lists ({paths}): import one at a time")
    path, clients = found[0]
    return clients, path


_EXPECTED: Final = (
    'expected a JSON array of clients, {"Clients": [...]}, or an appsettings.json '
    "with an IdentityServer:Clients section"
)
