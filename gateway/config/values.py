"""Value parsers for ``Reader.get``: each returns the value or raises ValueError with the message.

The message becomes the ``file:key: message`` line, so it says what was
expected and what was found.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config.reader import kind_of


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def string(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {kind_of(value)}")
    return str(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (bool, non-number, nan, inf, or too large).

    A timer armed with nan or inf (``.nan`` and ``.inf`` are YAML) raises in
    uvloop on every connection, and float() of a 400-digit integer overflows.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def positive_number(value: Any) -> float:
    number = finite(value)
    if number is None or number <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def non_negative_number(value: Any) -> float:
    number = finite(value)
    if number is None or number < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return number


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def choice(*options: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return convert


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def host_names(value: Any) -> tuple[str, ...]:
    names = string_list(value)
    for host in names:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", host):
            raise ValueError(f"not a host name: {host!r} (no port, no scheme)")
    return tuple(host.lower().rstrip(".") for host in names)


def parse_bind(value: Any) -> BindAddress:
    text = string(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"missing host in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # Each label letters, digits and hyphens: "my host-1" must not pass
        # `check` and then fail at bind time.
        if host != "localhost" and not all(
            part and all(ch.isalnum() or ch == "-" for ch in part) for part in host.split(".")
        ):
            raise ValueError(f"invalid host in {text!r}") from None
    return BindAddress(host, port)


def url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    """A parser of URLs in ``schemes``, normalised without a trailing slash."""

    def convert(value: Any) -> str:
        text = string(value)
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {text!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"URL must not have a query or fragment: {text!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError when out of range
        except ValueError:
            raise ValueError(f"port out of range (0-65535) in {text!r}") from None
        return (
            text.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}"
        )

    return convert
