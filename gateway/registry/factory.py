"""The one place that turns ``registry:`` config into a Registry."""

from __future__ import annotations

from gateway.config import ConfigError, RegistryConfig
from gateway.registry.base import WritableRegistry
from gateway.registry.yaml_file import YamlRegistry


def create_registry(config: RegistryConfig) -> WritableRegistry:
    if config.kind == "yaml":
        assert config.path is not None
        return YamlRegistry(config.path)
    raise ConfigError([f"registry.kind: {config.kind!r} is not supported by this build"])
