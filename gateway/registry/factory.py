"""The one place that turns ``registry:`` config into a Registry."""

from __future__ import annotations

from gateway.config.reader import ConfigError
from gateway.registry.base import WritableRegistry
from gateway.registry.config import RegistryConfig
from gateway.registry.yaml_file import YamlRegistry


def create_registry(config: RegistryConfig) -> WritableRegistry:
    if config.kind == "yaml":
        assert config.path is not None
        return YamlRegistry(config.path)
    if config.kind == "redis":
        # Imported here: a YAML deployment never loads redis-py.
        from gateway.registry.redis_store import RedisRegistry

        return RedisRegistry(config)
    raise ConfigError([f"registry.kind: {config.kind!r} is not supported by this build"])
