"""The two renderings shared by application events and the access log.

One time format everywhere: RFC 3339 in UTC with milliseconds
(``2026-12-06T21:42:19.123Z``, RFC 3339 §5.6), so lines from the two streams
sort and join.  The text format (``logging.format: text``) carries every field
of the JSON one as ``key=value`` pairs; a value that is not a plain word is
written as a JSON string, which escapes CR, LF and every other control
character (and, with ``ensure_ascii``, U+2028/U+2029 and the like), so no
input -- a path with ``%0A``, a header, a certificate subject -- can start a
line of its own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

# Bare values: what needs no quoting to be read back unambiguously.
_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")
_RESERVED = frozenset({"null", "true", "false"})

_second_cache: tuple[int, str] = (-1, "")


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (Unix time) as RFC 3339 UTC with milliseconds."""
    global _second_cache
    whole = int(timestamp)
    cached_second, prefix = _second_cache
    if whole != cached_second:
        # strftime costs more than the rest of an access-log line: once a second.
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_cache = (whole, prefix)
    millis = int((timestamp - whole) * 1000)
    return f"{prefix}.{millis:03d}Z"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return repr(value)
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text) and text not in _RESERVED and not _looks_numeric(text):
        return text
    return json.dumps(text)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def text_line(fields: Mapping[str, Any]) -> str:
    """``key=value`` pairs on one line; keys are the gateway's own names."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def json_line(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), default=str)
