"""gateway/ops/config.py: the ``admin:`` port and ``logging:``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_config
from gateway.config.values import BindAddress
from tests.spec_example import config_problems, config_with


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"admin": ["127.0.0.1:1"]}, "admin: expected a mapping, got a list"),
        (
            {"admin": {"allowed_hosts": ["gateway:9901"]}},
            "admin.allowed_hosts: not a host name: 'gateway:9901' (no port, no scheme)",
        ),
        (
            {"logging": {"level": "LOUD"}},
            "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'",
        ),
    ],
)
def test_single_problems(
    spec_config: Path, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = config_with(spec_config, tmp_path, change)
    (reported,) = config_problems(path)
    assert reported == f"{path}:{problem}"


def test_admin_null_means_no_admin_port(spec_config: Path, tmp_path: Path) -> None:
    path = config_with(spec_config, tmp_path, {"admin": None})
    assert load_config(path, env={}).admin.bind is None


def test_admin_and_logging_defaults(spec_config: Path, tmp_path: Path) -> None:
    path = config_with(spec_config, tmp_path, {"admin": {}, "logging": {}})
    config = load_config(path, env={})
    assert config.admin.bind == BindAddress("127.0.0.1", 9901)
    assert (config.admin.allowed_hosts, config.admin.metrics_client_labels) == ((), False)
    assert (config.logging.level, config.logging.format, config.logging.access_log) == (
        "INFO",
        "json",
        True,
    )
