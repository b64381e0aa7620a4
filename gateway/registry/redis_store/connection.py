"""From ``registry:`` config to redis.asyncio clients: plain, TLS, ACL, Sentinel or Cluster.

Two clients per registry: one for commands, one for the invalidation
subscription.  The subscription's never retries on its own: redis-py would
otherwise reconnect and resubscribe silently, and the replica would not know
that it may have missed invalidations while it was away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster, Sentinel
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, ResponseError

from gateway.registry.config import RegistryConfig

CommandClient = Redis | RedisCluster

# RedisClusterException is not a RedisError: without it here, a cluster that
# cannot be initialised escaped as a traceback from `check` and `clients import`.
REDIS_ERRORS = (RedisError, OSError, RedisClusterException)


def is_outage(exc: BaseException) -> bool:
    """Redis unreachable, as opposed to one command refused (that fails one lookup only)."""
    return not isinstance(exc, ResponseError) or isinstance(exc, ClusterDownError)


def reply_text(value: bytes | str | None) -> str:
    """Replies are decoded (decode_responses=True); the types allow bytes too."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value or ""


def explain(exc: BaseException) -> str:
    """One line for a Redis failure, naming the likely cause where redis-py's hides it."""
    text = str(exc)
    if isinstance(exc, RedisClusterException) and "Cluster mode is not enabled" in text:
        # redis-py reads any error to CLUSTER SLOTS, NOPERM included, as "not a cluster".
        return (
            "CLUSTER SLOTS was refused: the node is not in cluster mode, or the ACL user "
            "lacks +cluster|slots (docs/redis.md, Cluster)"
        )
    return text.splitlines()[0] if text else type(exc).__name__


def redacted_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def describe(config: RegistryConfig) -> str:
    assert config.url is not None
    if config.sentinel_master is not None:
        nodes = ",".join(f"{h}:{p}" for h, p in config.sentinel_nodes)
        where = f"sentinel master {config.sentinel_master} via {nodes}"
    elif config.cluster:
        where = f"cluster {redacted_url(config.url)}"
    else:
        where = redacted_url(config.url)
    return f"redis {where} (prefix {config.key_prefix!r})"


def _connection_kwargs(config: RegistryConfig, retries: int) -> dict[str, Any]:
    assert config.url is not None
    parsed: dict[str, Any] = dict(parse_url(config.url))
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.command_timeout,
        # One immediate retry survives a pooled connection that a Redis restart
        # closed; more would only hold requests while Redis is really down.
        "retry": Retry(NoBackoff(), retries),
    }
    if "path" in parsed:
        kwargs["unix_socket_path"] = parsed["path"]
    else:
        kwargs["host"] = parsed.get("host", "localhost")
        kwargs["port"] = parsed.get("port", 6379)
    if "db" in parsed:
        kwargs["db"] = parsed["db"]
    username = config.username or parsed.get("username")
    password = config.password or parsed.get("password")
    if username:
        kwargs["username"] = username
    if password:
        kwargs["password"] = password
    if urlsplit(config.url).scheme == "rediss":
        kwargs["ssl"] = True
        kwargs["ssl_cert_reqs"] = "required"
        kwargs["ssl_check_hostname"] = True
        if config.tls_ca is not None:
            kwargs["ssl_ca_certs"] = str(config.tls_ca)
        if config.tls_cert is not None and config.tls_key is not None:
            kwargs["ssl_certfile"] = str(config.tls_cert)
            kwargs["ssl_keyfile"] = str(config.tls_key)
    return kwargs


@dataclass
class RedisClients:
    commands: CommandClient
    subscriber: CommandClient  # the same object for a cluster
    sentinel: Sentinel | None = None

    async def pubsub(self) -> PubSub:
        if isinstance(self.subscriber, RedisCluster):
            # ClusterPubSub routes by the slot table, which only a command fills.
            await self.subscriber.initialize()
        return self.subscriber.pubsub()

    async def aclose(self) -> None:
        await self.commands.aclose()
        if self.subscriber is not self.commands:
            await self.subscriber.aclose()
        if self.sentinel is not None:
            for node in self.sentinel.sentinels:
                await node.aclose()


def open_clients(config: RegistryConfig) -> RedisClients:
    """Clients connect lazily: nothing here touches the network."""
    commands_kwargs = _connection_kwargs(config, retries=1)
    pubsub_kwargs = _connection_kwargs(config, retries=0)
    if config.sentinel_master is not None:
        master = config.sentinel_master
        for kw in (commands_kwargs, pubsub_kwargs):
            kw.pop("host", None)
            kw.pop("port", None)
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": config.connect_timeout,
            "socket_timeout": config.command_timeout,
        }
        if config.sentinel_username:
            sentinel_kwargs["username"] = config.sentinel_username
        if config.sentinel_password:
            sentinel_kwargs["password"] = config.sentinel_password
        # Through a typed alias: redis-py annotates Sentinel.__init__ only from 8.2 on,
        # and a `type: ignore` would be wrong on one side of that line.
        make_sentinel: Callable[..., Sentinel] = Sentinel
        sentinel = make_sentinel(list(config.sentinel_nodes), sentinel_kwargs=sentinel_kwargs)
        return RedisClients(
            commands=sentinel.master_for(master, **commands_kwargs),
            subscriber=sentinel.master_for(master, **pubsub_kwargs),
            sentinel=sentinel,
        )
    if config.cluster:
        for kw in (commands_kwargs, pubsub_kwargs):
            kw.pop("db", None)
        cluster = RedisCluster(**commands_kwargs)
        # PUBLISH reaches every node of a cluster, so one node's subscription
        # sees every change; ClusterPubSub picks the node by the channel's slot.
        return RedisClients(commands=cluster, subscriber=cluster)
    return RedisClients(commands=Redis(**commands_kwargs), subscriber=Redis(**pubsub_kwargs))
