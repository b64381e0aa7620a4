"""The Redis registry: shared by a fleet of replicas, live changes, bounded outage behaviour."""

from gateway.registry.redis_store.registry import RedisRegistry

__all__ = ["RedisRegistry"]
