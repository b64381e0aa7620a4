"""The ``admin:`` and ``logging:`` sections: the plain-HTTP admin port (gateway/ops/admin.py) and logs (gateway/ops/logs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway.config.reader import Reader
from gateway.config.values import BindAddress, boolean, choice, host_names, parse_bind


@dataclass(frozen=True, slots=True)
class AdminConfig:
    bind: BindAddress | None
    # Host names answered besides loopback names and IP literals (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # Client ids and CA subjects as /metrics label values; off: "" and fingerprints.
    metrics_client_labels: bool = False


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


def parse_admin(r: Reader, top: dict[str, Any]) -> AdminConfig:
    with r.at("admin"):
        if "admin" in top and top["admin"] is None:
            return AdminConfig(bind=None)  # ``admin: null``: no admin port at all
        admin = r.mapping(top.get("admin"), {"bind", "allowed_hosts", "metrics_client_labels"})
        return AdminConfig(
            bind=r.get(admin, "bind", parse_bind, BindAddress("127.0.0.1", 9901)),
            allowed_hosts=r.get(admin, "allowed_hosts", host_names, ()),
            metrics_client_labels=r.get(admin, "metrics_client_labels", boolean, False),
        )


def parse_logging(r: Reader, data: Any) -> LoggingConfig:
    with r.at("logging"):
        lg = r.mapping(data, {"level", "format", "access_log"})
        return LoggingConfig(
            level=r.get(lg, "level", choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
            format=r.get(lg, "format", choice("json", "text"), "json"),
            access_log=r.get(lg, "access_log", boolean, True),
        )
