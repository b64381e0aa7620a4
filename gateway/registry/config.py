"""The ``registry:`` section: where registered clients live, a YAML file or Redis.

gateway/registry/factory.py builds the registry from it; the Redis settings
are read by gateway/registry/redis_store/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.config.reader import Reader
from gateway.config.values import (
    boolean,
    choice,
    finite,
    parse_bind,
    positive_int,
    positive_number,
    string,
)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    kind: Literal["yaml", "redis"]
    path: Path | None
    url: str | None
    key_prefix: str
    max_stale: float  # seconds a cached match is served while Redis is unreachable
    cache_size: int
    # kind: redis only.  Credentials here override those in the URL, so that the
    # URL can sit in a ConfigMap and the password in a Secret (env override).
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None  # rediss://: CA bundle; None: the system store
    tls_cert: Path | None = None  # rediss://: client certificate (with tls_key)
    tls_key: Path | None = None
    sentinel_master: str | None = None  # set: ask sentinel_nodes where the master is
    sentinel_nodes: tuple[tuple[str, int], ...] = ()
    sentinel_username: str | None = None  # the sentinels' own ACL, if any
    sentinel_password: str | None = None
    cluster: bool = False
    connect_timeout: float = 2.0
    command_timeout: float = 2.0


def parse_registry(r: Reader, data: Any) -> RegistryConfig:
    redis_keys = {
        "url",
        "key_prefix",
        "max_stale",
        "cache_size",
        "username",
        "password",
        "tls",
        "sentinel",
        "cluster",
        "connect_timeout",
        "command_timeout",
    }

    def non_negative(value: Any) -> float:
        number = finite(value)
        if number is None or number < 0:
            raise ValueError(f"expected a number of seconds >= 0, got {value!r}")
        return number

    def has_hash_tag(prefix: str) -> bool:
        # Redis Cluster hashes only the part between the first "{" and the next "}".
        start = prefix.find("{")
        end = prefix.find("}", start + 1)
        return start >= 0 and end > start + 1

    def redis_url(value: Any) -> str:
        text = string(value)
        parts = urlsplit(text)
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"expected unix:///path/to/redis.sock, got {text!r}")
        elif parts.scheme in ("redis", "rediss"):
            if not parts.hostname:
                raise ValueError(f"missing host in {text!r}")
            try:
                parts.port  # noqa: B018 - raises ValueError when out of range
            except ValueError:
                raise ValueError(f"invalid port in {text!r}") from None
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError(f"the path must be a database number, e.g. /0, got {text!r}")
        else:
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {text!r}")
        if parts.query or parts.fragment:
            raise ValueError("URL must not have a query or fragment: set registry keys instead")
        return text

    with r.at("registry"):
        reg = r.mapping(data, {"kind", "path"} | redis_keys)
        if data is None:
            r.problem("required")
        kind = r.get(reg, "kind", choice("yaml", "redis"), "yaml")
        path = r.get(reg, "path", r.file) if kind == "yaml" else None
        if kind != "redis":
            # The redis keys may stay in a YAML deployment's config (the example
            # file carries both); they are read only when kind is redis.
            return RegistryConfig(
                kind=kind,
                path=path,
                url=None,
                key_prefix="mtls-gateway:",
                max_stale=60.0,
                cache_size=100_000,
            )
        url = r.get(reg, "url", redis_url)
        scheme = urlsplit(url).scheme if url else ""
        key_prefix = r.get(reg, "key_prefix", string, "mtls-gateway:")
        if key_prefix == "":
            r.problem(
                "must not be empty: it keeps this registry apart in a shared Redis", "key_prefix"
            )

        tls_ca = tls_cert = tls_key = None
        with r.at("tls"):
            tls = r.mapping(reg.get("tls"), {"ca", "cert", "key"})
            if tls:
                if scheme != "rediss":
                    r.problem("TLS settings need a rediss:// URL")
                tls_ca = r.get(tls, "ca", r.file, None)
                tls_cert = r.get(tls, "cert", r.file, None)
                tls_key = r.get(tls, "key", r.file, None)
                if (tls_cert is None) != (tls_key is None):
                    r.problem("cert and key go together")

        master: str | None = None
        nodes: list[tuple[str, int]] = []
        sentinel_username = sentinel_password = None
        with r.at("sentinel"):
            sentinel = r.mapping(reg.get("sentinel"), {"master", "nodes", "username", "password"})
            if sentinel:
                master = r.get(sentinel, "master", string)
                sentinel_username = r.get(sentinel, "username", string, None)
                sentinel_password = r.get(sentinel, "password", string, None)
                with r.at("nodes"):
                    raw_nodes = sentinel.get("nodes")
                    if not isinstance(raw_nodes, list) or not raw_nodes:
                        r.problem("required: a list of sentinel host:port addresses")
                        raw_nodes = []
                    for i, node in enumerate(raw_nodes):
                        with r.at(i):
                            try:
                                bind = parse_bind(node)
                            except ValueError as exc:
                                r.problem(str(exc))
                                continue
                            nodes.append((bind.host, bind.port))
                if scheme == "unix":
                    r.problem("sentinel needs a redis:// or rediss:// URL")

        cluster = r.get(reg, "cluster", boolean, False)
        if cluster:
            if master is not None:
                r.problem("choose one of sentinel and cluster", "cluster")
            if scheme == "unix":
                r.problem("cluster needs a redis:// or rediss:// URL", "cluster")
            # MULTI/EXEC and Lua scripts need every key of a write in one hash
            # slot; a hash tag in the prefix puts the whole registry in one slot.
            if key_prefix and not has_hash_tag(key_prefix):
                r.problem(
                    "a cluster needs a hash tag in the prefix, e.g. '{mtls-gateway}:'",
                    "key_prefix",
                )
        return RegistryConfig(
            kind=kind,
            path=None,
            url=url,
            key_prefix=key_prefix,
            max_stale=r.get(reg, "max_stale", non_negative, 60.0),
            cache_size=r.get(reg, "cache_size", positive_int, 100_000),
            username=r.get(reg, "username", string, None),
            password=r.get(reg, "password", string, None),
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            sentinel_master=master,
            sentinel_nodes=tuple(nodes),
            sentinel_username=sentinel_username,
            sentinel_password=sentinel_password,
            cluster=cluster,
            connect_timeout=r.get(reg, "connect_timeout", positive_number, 2.0),
            command_timeout=r.get(reg, "command_timeout", positive_number, 2.0),
        )
