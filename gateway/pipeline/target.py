"""The request target (RFC 9112 §3.2) split into the decoded path and the raw query."""

from __future__ import annotations

from urllib.parse import urlsplit

import yarl


def split_target(target: str) -> tuple[str, str]:
    """(decoded path, query as sent) of an origin-form, absolute-form or ``*`` target.

    Percent-decoding follows yarl's (what aiohttp gave the handlers before):
    valid UTF-8 escapes are decoded, ``%2F`` included, and an escape that is
    not valid UTF-8 is left as it was, so the path checks (gateway/paths.py)
    see exactly what routing will see.
    """
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target == "*":
        return "*", ""
    else:
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
    path, _, _ = path.partition("#")
    if "%" in path:
        path = yarl.URL.build(path=path, encoded=True).path
    return path, query
