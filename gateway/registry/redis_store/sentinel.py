"""Is the invalidation subscription still on the master that Sentinel names?

After a failover the old master can stay up, still saying ``role:master``,
until Sentinel reconfigures it (measured: about 9 s).  A subscription on it
keeps answering PINGs but never sees a write made on the new master, so a
removed client kept working that long.  ROLE cannot tell (the old node still
says master), so each health check asks Sentinel for the master's address and
compares it with the subscription's connection.
"""

from __future__ import annotations

import logging

from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from gateway.registry.redis_store.connection import CommandClient

log = logging.getLogger("gateway.registry")


class MasterWatch:
    def __init__(self, sentinel: Sentinel, service: str, commands: CommandClient) -> None:
        self._sentinel = sentinel
        self._service = service
        self._commands = commands

    async def moved_to(self, pubsub: PubSub) -> str | None:
        """The new master's address if ``pubsub`` is connected elsewhere; None if all is well."""
        connection = pubsub.connection
        if connection is None:
            return None
        try:
            host, port = await self._sentinel.discover_master(self._service)
        except (RedisError, OSError) as exc:
            # No sentinel answered: inconclusive.  The PING still tells whether
            # the node itself is alive; fail-closed rules apply from there.
            log.debug("registry: no sentinel named the master: %s", exc)
            return None
        if (connection.host, int(connection.port)) == (host, int(port)):
            return None
        pool = self._commands.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            # Learning the new address drops the idle command connections to the
            # old master; connections in use are dropped when they are released.
            await pool.get_master_address()
        return f"{host}:{port}"
