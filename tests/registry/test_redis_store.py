"""RedisRegistry against a real redis-server: format, lookups, atomic writes, sync, outage."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from cryptography.x509.oid import NameOID

from gateway.registry.base import RegistryUnavailable, RegistryWriteError
from gateway.registry.config import RegistryConfig
from gateway.registry.matching import ClientIndex, MatchResult
from gateway.registry.model import Client, parse_client
from gateway.registry.redis_store import RedisRegistry
from gateway.registry.redis_store.keys import KeySchema, client_fields, dn_digest
from gateway.registry.yaml_file import dump_registry_document, parse_registry_document
from gateway.trust.identity import identity_from_der
from tests.conftest import MakeGateway, echoed_headers, free_port
from tests.pki import Issued, Pki, name
from tests.registry.conftest import (
    RedisServer,
    cluster_free_port,
    command,
    pasted_thumbprints,
    require_redis_server,
    text,
)

PREFIX = "test:"
REPO = Path(__file__).resolve().parents[2]
POLL_LIMIT = 10.0  # generous bound for polling loops; never a timing assertion


def registry_config(url: str, **overrides: Any) -> RegistryConfig:
    fields: dict[str, Any] = {
        "kind": "redis",
        "path": None,
        "url": url,
        "key_prefix": PREFIX,
        "max_stale": 60.0,
        "cache_size": 1000,
    }
    fields.update(overrides)
    return RegistryConfig(**fields)


MakeRegistry = Callable[..., Awaitable[RedisRegistry]]


@pytest.fixture
async def make_registry(redis_server: RedisServer) -> AsyncIterator[MakeRegistry]:
    """Started registries on the test server (each one a replica with its own cache)."""
    made: list[RedisRegistry] = []

    async def make(*, start: bool = True, **overrides: Any) -> RedisRegistry:
        registry = RedisRegistry(registry_config(redis_server.url, **overrides))
        made.append(registry)
        if start:
            await registry.start()
        return registry

    yield make
    for registry in made:
        await registry.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + POLL_LIMIT
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


def client(client_id: str, *secrets: tuple[str, str], **extra: Any) -> Client:
    return parse_client(
        {
            "client_id": client_id,
            "allowed_scopes": ["api1"],
            "secrets": [{"type": t, "value": v} for t, v in secrets],
            **extra,
        }
    )


def ids(result: MatchResult) -> list[str]:
    return sorted({m.client.client_id for m in result.matches})


@pytest.fixture(scope="module")
def san_cert(pki: Pki) -> Issued:
    return pki.client(
        "san-client",
        dns=["API.Example.org."],
        uris=["spiffe://example.org/ns/prod/sa/api"],
        ips=["10.1.2.3", "2001:db8::1"],
        emails=["Ops@Example.ORG"],
    )


@pytest.fixture(scope="module")
def self_signed(pki: Pki) -> Issued:
    return pki.certificate(name((NameOID.COMMON_NAME, "pinned-client")), self_signed=True)


async def index_agrees_with_documents(raw: aioredis.Redis) -> None:
    """The invariant every write keeps: the index is exactly what the documents imply."""
    keys = KeySchema(PREFIX)
    docs = await raw.hgetall(keys.clients)
    expected: dict[str, set[str]] = {}
    for client_id, doc in docs.items():
        for field in client_fields(parse_client(json.loads(doc))):
            expected.setdefault(field, set()).add(text(client_id))
    actual = {f: set(v.split()) for f, v in (await raw.hgetall(keys.index)).items()}
    assert actual == expected


# ------------------------------------------------------------------ format


REGISTRY_YAML = """
clients:
  - client_id: mtls.client
    client_name: Demo
    allowed_grant_types: [client_credentials]
    allowed_scopes: [api1, api2]
    access_token_lifetime: 600
    claims: {tenant: acme}
    issuer: "CN=Test Root CA, O=Test"
    secrets:
      - type: X509CertificateName
        value: "CN=client, OU=production, O=company"
        description: client.dn
      - type: X509CertificateThumbprint
        value: BC:A0:D0:40:84:7F:84:3C:5E:E0:FA:6E:B4:94:83:74:70:15:58:68
        expiration: 2030-01-01T00:00:00Z
  - client_id: spiffe.client
    enabled: false
    allowed_scopes: [api1]
    secrets:
      - {type: X509SanUri, value: "spiffe://example.org/ns/prod/sa/api"}
      - {type: X509SanDns, value: api.example.org}
      - {type: X509SanIp, value: 10.1.2.3}
      - {type: X509SanEmail, value: ops@example.org}
"""


async def test_import_from_the_yaml_format_and_export_it_back(
    make_registry: MakeRegistry, raw: aioredis.Redis
) -> None:
    clients = parse_registry_document(yaml.safe_load(REGISTRY_YAML), "clients.yaml")
    registry = await make_registry(start=False)
    await registry.replace_all(clients)

    listed = sorted(await registry.list_clients(), key=lambda c: c.client_id)
    assert [c.to_dict() for c in listed] == [c.to_dict() for c in clients]
    assert dump_registry_document(listed) == dump_registry_document(clients)
    shown = await registry.get("mtls.client")
    assert shown is not None and shown.to_dict() == clients[0].to_dict()
    assert await registry.get("nobody") is None

    # The documented schema: one JSON document per client, index fields per secret.
    keys = KeySchema(PREFIX)
    assert json.loads(text(await raw.hget(keys.clients, "mtls.client"))) == clients[0].to_dict()
    index = await raw.hgetall(keys.index)
    assert index["tp:bca0d040847f843c5ee0fa6eb494837470155868"] == "mtls.client"
    dn = clients[0].secrets[0].dn
    assert dn is not None
    assert index[f"dn:{dn_digest(dn.key)}"] == "mtls.client"
    for field in (
        "uri:spiffe://example.org/ns/prod/sa/api",
        "dns:api.example.org",
        "ip:10.1.2.3",
        "email:ops@example.org",
    ):
        assert index[field] == "spiffe.client"
    meta = await raw.hgetall(keys.meta)
    assert int(meta["generation"]) == 1 and meta["epoch"]
    await index_agrees_with_documents(raw)

    # --replace-all semantics: the registry becomes exactly the list given.
    await registry.replace_all(clients[1:])
    assert [c.client_id for c in await registry.list_clients()] == ["spiffe.client"]
    await index_agrees_with_documents(raw)
    await registry.replace_all([])
    assert await registry.list_clients() == []
    assert await raw.exists(keys.clients, keys.index) == 0
    assert not [k async for k in raw.scan_iter(f"{PREFIX}staging:*")]


async def test_import_refuses_duplicates_and_writes_nothing(make_registry: MakeRegistry) -> None:
    registry = await make_registry(start=False)
    await registry.put(client("kept", ("X509SanDns", "kept.example")))
    with pytest.raises(RegistryWriteError, match="client twin: duplicate"):
        await registry.replace_all(
            [client("twin", ("X509SanDns", "a.example")), client("twin", ("X509SanDns", "b"))]
        )
    assert [c.client_id for c in await registry.list_clients()] == ["kept"]


# ----------------------------------------------------------------- lookups


SECRET_CASES: dict[str, Callable[[Issued], str]] = {
    "X509CertificateName": lambda c: c.cert.subject.rfc4514_string(),  # parsed, any form
    "X509CertificateThumbprint": lambda c: c.thumbprint.upper(),
    "X509SanDns": lambda c: "api.example.org",
    "X509SanUri": lambda c: "spiffe://example.org/ns/prod/sa/api",
    "X509SanIp": lambda c: "2001:0db8:0000::1",
    "X509SanEmail": lambda c: "Ops@example.org",
}


@pytest.mark.parametrize("kind", sorted(SECRET_CASES))
async def test_lookup_by_each_secret_type(
    make_registry: MakeRegistry, san_cert: Issued, kind: str
) -> None:
    value = SECRET_CASES[kind](san_cert)
    if kind == "X509CertificateName":
        # RFC 4514 is most-specific-first with "," like IdentityServer's form.
        value = "CN=san-client, OU=production, O=company"
    registered = [client("the.client", (kind, value)), client("other", ("X509SanDns", "x.org"))]
    registry = await make_registry()
    await registry.replace_all(registered)
    identity = identity_from_der(san_cert.der)

    miss = await registry.match(identity, exact_only=False)  # from Redis
    hit = await registry.match(identity, exact_only=False)  # from the cache
    assert ids(miss) == ids(hit) == ["the.client"]
    assert miss.client is not None and miss.client.client_id == "the.client"
    assert miss.matches[0].auth_method == (
        "self_signed_tls_client_auth" if kind == "X509CertificateThumbprint" else "tls_client_auth"
    )
    assert registry.cached_entries > 0


def _same_as_yaml_cases(pki: Pki, self_signed: Issued) -> list[tuple[str, Issued, bool, Client]]:
    tricky = pki.client("client, OU=production")  # a CN that contains the OU's text
    ca_issued = pki.client("client")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    dn = ("X509CertificateName", "CN=client, OU=production, O=company")
    return [
        ("match", ca_issued, False, client("c", dn)),
        ("disabled", ca_issued, False, client("c", dn, enabled=False)),
        ("cn-substring", tricky, False, client("c", dn)),
        (
            "pinned-cannot-use-dn",
            self_signed,
            True,
            client("c", ("X509CertificateName", "CN=pinned-client")),
        ),
        ("issuer-pin", ca_issued, False, client("c", dn, issuer="CN=Other CA, O=Test")),
        ("issuer-ok", ca_issued, False, client("c", dn, issuer="CN=Test Root CA, O=Test")),
        (
            "pinned-thumbprint",
            self_signed,
            True,
            client("c", ("X509CertificateThumbprint", self_signed.thumbprint)),
        ),
        (
            "expired-secret",
            ca_issued,
            False,
            parse_client(
                {
                    "client_id": "c",
                    "secrets": [{"type": dn[0], "value": dn[1], "expiration": past}],
                }
            ),
        ),
    ]


async def test_fail_closed_rules_are_the_yaml_registrys(
    make_registry: MakeRegistry, pki: Pki, self_signed: Issued
) -> None:
    registry = await make_registry()
    for label, cert, pinned, registered in _same_as_yaml_cases(pki, self_signed):
        await registry.replace_all([registered])
        identity = identity_from_der(cert.der)
        expected = ClientIndex([registered]).match(
            identity, exact_only=pinned, now=dt.datetime.now(dt.UTC)
        )
        for _ in range(2):  # a miss, then a cache hit
            got = await registry.match(identity, exact_only=pinned)
            assert (ids(got), got.reason) == (ids(expected), expected.reason), label


async def test_unreadable_document_matches_nothing(
    make_registry: MakeRegistry, raw: aioredis.Redis, san_cert: Issued
) -> None:
    registry = await make_registry()
    keys = KeySchema(PREFIX)
    await raw.hset(keys.index, "dns:api.example.org", "broken")
    await raw.hset(keys.clients, "broken", '{"client_id": "broken", "secrets": "nope"}')
    result = await registry.match(identity_from_der(san_cert.der), exact_only=False)
    assert result.client is None


async def test_stale_index_entry_cannot_let_a_certificate_in(
    make_registry: MakeRegistry, raw: aioredis.Redis, san_cert: Issued
) -> None:
    """Candidates are re-checked against their documents, not trusted from the index."""
    registry = await make_registry()
    await registry.put(client("victim", ("X509SanDns", "victim.example")))
    await raw.hset(KeySchema(PREFIX).index, "dns:api.example.org", "victim")
    result = await registry.match(identity_from_der(san_cert.der), exact_only=False)
    assert result.matches == ()


async def test_a_refused_lookup_fails_that_lookup_only(
    make_registry: MakeRegistry, pki: Pki, san_cert: Issued
) -> None:
    """A command error (here: more fields than a Lua call takes) is no outage."""
    registry = await make_registry()
    await registry.put(client("api", ("X509SanDns", "api.example.org")))
    odd = pki.client("many-names", dns=[f"n{i}.example.org" for i in range(9000)])
    with pytest.raises(RegistryUnavailable):
        await registry.match(identity_from_der(odd.der), exact_only=False)
    assert registry.ready
    assert ids(await registry.match(identity_from_der(san_cert.der), exact_only=False)) == ["api"]


# ------------------------------------------------------------------ writes


async def test_update_and_remove_keep_the_index_exact(
    make_registry: MakeRegistry, raw: aioredis.Redis
) -> None:
    registry = await make_registry(start=False)
    shared = ("X509SanDns", "shared.example")
    await registry.put(client("a", shared, ("X509SanUri", "spiffe://x/a")))
    await registry.put(client("b", shared))
    await index_agrees_with_documents(raw)
    await registry.put(client("a", ("X509SanUri", "spiffe://x/a2")))  # update: old fields go
    await index_agrees_with_documents(raw)
    assert await raw.hget(KeySchema(PREFIX).index, "dns:shared.example") == "b"
    assert await registry.remove("b") is True
    assert await registry.remove("b") is False
    await index_agrees_with_documents(raw)
    assert await raw.hkeys(KeySchema(PREFIX).index) == ["uri:spiffe://x/a2"]
    generation = int(text(await raw.hget(KeySchema(PREFIX).meta, "generation")))
    assert generation == 4  # every write bumped it; the refused remove did not


async def test_concurrent_adds_without_replace_let_exactly_one_in(
    make_registry: MakeRegistry,
) -> None:
    writers = [await make_registry(start=False) for _ in range(8)]
    results = await asyncio.gather(
        *(
            w.put(client("same", ("X509SanDns", f"w{i}.example")), replace=False)
            for i, w in enumerate(writers)
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, RegistryWriteError)]
    assert len(refused) == len(writers) - 1, results
    assert {str(r) for r in refused} == {"client same: already exists (use --replace)"}


async def test_concurrent_writes_leave_indexes_and_documents_agreeing(
    make_registry: MakeRegistry, raw: aioredis.Redis
) -> None:
    writers = [await make_registry(start=False) for _ in range(4)]
    shared = [("X509SanDns", f"shared{i}.example") for i in range(3)]

    async def churn(w: int, registry: RedisRegistry) -> None:
        for i in range(40):
            client_id = f"client{(w + i) % 6}"  # writers collide on the same clients
            if i % 5 == 4:
                await registry.remove(client_id)
            else:
                await registry.put(
                    client(client_id, shared[i % 3], ("X509SanUri", f"spiffe://x/{w}/{i}"))
                )

    async def importer(registry: RedisRegistry) -> None:
        for i in range(5):
            await registry.replace_all([client(f"imported{i}", shared[0])])
            await asyncio.sleep(0)

    await asyncio.gather(*(churn(w, r) for w, r in enumerate(writers)), importer(writers[0]))
    await index_agrees_with_documents(raw)


# -------------------------------------------------------------------- sync


async def test_a_change_reaches_another_replica(
    make_registry: MakeRegistry, san_cert: Issued
) -> None:
    writer = await make_registry()
    replica = await make_registry()
    identity = identity_from_der(san_cert.der)
    await writer.put(client("api", ("X509SanDns", "api.example.org")))
    assert ids(await replica.match(identity, exact_only=False)) == ["api"]
    generation = replica.generation

    await writer.remove("api")

    async def refused() -> bool:
        return not (await replica.match(identity, exact_only=False)).matches

    await eventually(refused, "the replica refuses the removed client")
    assert replica.generation > generation

    # A cached "nobody" is dropped too when a client is added for it.
    await writer.put(client("api2", ("X509SanUri", "spiffe://example.org/ns/prod/sa/api")))

    async def accepted() -> bool:
        return ids(await replica.match(identity, exact_only=False)) == ["api2"]

    await eventually(accepted, "the replica accepts the added client")


async def test_a_replica_that_missed_messages_resyncs(
    make_registry: MakeRegistry, raw: aioredis.Redis, san_cert: Issued
) -> None:
    writer = await make_registry(start=False)
    replica = await make_registry()
    identity = identity_from_der(san_cert.der)
    await writer.put(client("api", ("X509SanDns", "api.example.org")))
    assert ids(await replica.match(identity, exact_only=False)) == ["api"]
    assert ids(await replica.match(identity, exact_only=False)) == ["api"]  # cached now

    # A change the replica never hears of (no PUBLISH), then its subscription drops.
    keys = KeySchema(PREFIX)
    await raw.hdel(keys.clients, "api")
    await raw.hdel(keys.index, "dns:api.example.org")
    await raw.hincrby(keys.meta, "generation", 1)
    assert ids(await replica.match(identity, exact_only=False)) == ["api"]  # still cached
    await raw.client_kill_filter(_type="pubsub")

    async def resynced() -> bool:
        return replica.ready and not (await replica.match(identity, exact_only=False)).matches

    await eventually(resynced, "the replica drops its cache after reconnecting")


async def test_redis_outage_serves_cached_matches_until_max_stale(
    make_registry: MakeRegistry, redis_server: RedisServer, san_cert: Issued, pki: Pki
) -> None:
    registry = await make_registry(max_stale=1.5, connect_timeout=0.5, command_timeout=0.5)
    known = identity_from_der(san_cert.der)
    unknown = identity_from_der(pki.client("never-seen").der)
    await registry.put(client("api", ("X509SanDns", "api.example.org")))

    async def applied() -> bool:
        return registry.applied_generation == 1

    await eventually(applied, "the registry hears of its own write")
    assert ids(await registry.match(known, exact_only=False)) == ["api"]  # now in the cache
    assert registry.ready
    generation = registry.generation

    redis_server.kill()
    # Cached: served.  Not cached: 503, never a guess.
    assert ids(await registry.match(known, exact_only=False)) == ["api"]
    with pytest.raises(RegistryUnavailable):
        await registry.match(unknown, exact_only=False)
    assert not registry.ready
    assert registry.generation > generation  # connections re-check now

    async def expired() -> bool:
        try:
            await registry.match(known, exact_only=False)
        except RegistryUnavailable:
            return True
        return False

    await eventually(expired, "cached matches stop being served after max_stale")
    with pytest.raises(RegistryUnavailable):
        await registry.get("api")

    # Back on the same port (empty: nothing persisted): recovers without restart.
    redis_server.start()

    async def ready_again() -> bool:
        return registry.ready

    await eventually(ready_again, "the registry reconnects by itself")
    writer = await make_registry(start=False)
    await writer.put(client("api", ("X509SanDns", "api.example.org")))

    async def served_again() -> bool:
        return ids(await registry.match(known, exact_only=False)) == ["api"]

    await eventually(served_again, "lookups succeed again")


async def test_cli_style_use_without_start(
    redis_server: RedisServer, make_registry: MakeRegistry
) -> None:
    """The CLI never calls start(): reads and writes go straight to Redis."""
    registry = await make_registry(start=False)
    assert not registry.ready
    await registry.put(client("a", ("X509SanDns", "a.example")))
    got = await registry.get("a")
    assert got is not None and got.client_id == "a"


async def test_writes_fail_with_a_message_when_redis_is_down(
    redis_server: RedisServer, make_registry: MakeRegistry
) -> None:
    registry = await make_registry(start=False, connect_timeout=0.5)
    redis_server.kill()
    with pytest.raises(RegistryWriteError, match=r"client a: redis redis://127\.0\.0\.1"):
        await registry.put(client("a", ("X509SanDns", "a.example")))
    with pytest.raises(RegistryUnavailable):
        await registry.list_clients()


async def test_acl_user_limited_to_the_prefix(
    redis_server: RedisServer, raw: aioredis.Redis, make_registry: MakeRegistry
) -> None:
    """The ACL from docs/redis.md is enough: keys and channel under the prefix only."""
    await command(
        raw,
        "ACL",
        "SETUSER",
        "gateway",
        "on",
        ">s3cret",
        "resetkeys",
        f"~{PREFIX}*",
        "resetchannels",
        f"&{PREFIX}*",
        "-@all",
        "+@read",
        "+@write",
        "+@scripting",
        "+@pubsub",
        "+@connection",
        "+@keyspace",
    )
    await command(raw, "ACL", "SETUSER", "default", "off")
    url = f"redis://gateway:s3cret@127.0.0.1:{redis_server.port}/0"
    writer = RedisRegistry(registry_config(url))
    replica = await make_registry(username="gateway", password="s3cret")
    try:
        await writer.replace_all([client("a", ("X509SanDns", "a.example"))])
        await writer.put(client("b", ("X509SanDns", "b.example")))
        assert replica.ready
        assert {c.client_id for c in await replica.list_clients()} == {"a", "b"}
        assert "s3cret" not in writer.description
    finally:
        await writer.close()
    bad = await make_registry(start=False, username="gateway", password="wrong")
    with pytest.raises(RegistryUnavailable):
        await bad.list_clients()


# ----------------------------------------------------- sentinel and cluster


@pytest.fixture
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster owning every slot: enough to run the cluster code path."""
    require_redis_server()
    node = RedisServer(
        tmp_path_factory.mktemp("cluster"),
        port=cluster_free_port(),
        extra=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
    )
    node.start()
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.sendall(b"CLUSTER ADDSLOTSRANGE 0 16383\r\n")
            assert s.recv(64).startswith(b"+OK")
            deadline = time.monotonic() + POLL_LIMIT
            while True:
                s.sendall(b"CLUSTER INFO\r\n")
                if b"cluster_state:ok" in s.recv(4096):
                    break
                assert time.monotonic() < deadline, "the one-node cluster never became ok"
                time.sleep(0.05)
        yield node
    finally:
        node.stop()


@pytest.fixture
def sentinel(redis_server: RedisServer) -> Iterator[RedisServer]:
    directory = redis_server.directory / "sentinel"
    directory.mkdir()
    conf = directory / "sentinel.conf"
    conf.write_text(f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    node = RedisServer(directory, config_file=conf, extra=("--sentinel",))
    node.start()
    try:
        yield node
    finally:
        node.stop()


async def _two_replicas_agree(writer: RedisRegistry, replica: RedisRegistry, cert: Issued) -> None:
    identity = identity_from_der(cert.der)
    await writer.replace_all([client("a", ("X509SanDns", "api.example.org"))])
    assert ids(await replica.match(identity, exact_only=False)) == ["a"]
    await writer.put(client("b", ("X509SanUri", "spiffe://example.org/ns/prod/sa/api")))
    await writer.remove("a")

    async def moved() -> bool:
        return ids(await replica.match(identity, exact_only=False)) == ["b"]

    await eventually(moved, "the replica follows the writer")
    assert replica.ready
    assert [c.client_id for c in await replica.list_clients()] == ["b"]


async def test_cluster(cluster_node: RedisServer, san_cert: Issued) -> None:
    url = f"redis://127.0.0.1:{cluster_node.port}"
    writer = RedisRegistry(registry_config(url, cluster=True, key_prefix="{t}:"))
    replica = RedisRegistry(registry_config(url, cluster=True, key_prefix="{t}:"))
    await replica.start()
    try:
        await _two_replicas_agree(writer, replica, san_cert)
    finally:
        await writer.close()
        await replica.close()


async def test_sentinel(sentinel: RedisServer, san_cert: Issued) -> None:
    nodes = (("127.0.0.1", sentinel.port),)
    options = {"sentinel_master": "mymaster", "sentinel_nodes": nodes}
    writer = RedisRegistry(registry_config("redis://mymaster/0", **options))
    replica = RedisRegistry(registry_config("redis://mymaster/0", **options))
    await replica.start()
    try:
        await _two_replicas_agree(writer, replica, san_cert)
    finally:
        await writer.close()
        await replica.close()


async def test_rediss_with_a_client_certificate(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, san_cert: Issued
) -> None:
    require_redis_server()
    tls_port = free_port()
    server = RedisServer(
        tmp_path_factory.mktemp("redis-tls"),
        extra=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(pki.server.cert_path),
            "--tls-key-file",
            str(pki.server.key_path),
            "--tls-ca-cert-file",
            str(pki.ca.cert_path),
            "--tls-auth-clients",
            "yes",
        ),
    )
    server.start()
    registry_cert = pki.client("gateway-registry")
    url = f"rediss://localhost:{tls_port}/0"
    tls = {"tls_ca": pki.ca.cert_path}
    mtls = {**tls, "tls_cert": registry_cert.cert_path, "tls_key": registry_cert.key_path}
    writer = RedisRegistry(registry_config(url, **mtls))
    replica = RedisRegistry(registry_config(url, **mtls))
    no_cert = RedisRegistry(registry_config(url, connect_timeout=1.0, **tls))
    try:
        await replica.start()
        await _two_replicas_agree(writer, replica, san_cert)
        with pytest.raises(RegistryUnavailable):  # the server asks for a client certificate
            await no_cert.list_clients()
    finally:
        for registry in (writer, replica, no_cert):
            await registry.close()
        server.stop()


async def test_unix_socket(tmp_path_factory: pytest.TempPathFactory, san_cert: Issued) -> None:
    require_redis_server()
    directory = tmp_path_factory.mktemp("redis-unix")
    server = RedisServer(directory, extra=("--unixsocket", str(directory / "redis.sock")))
    server.start()
    url = f"unix://{directory / 'redis.sock'}"
    writer = RedisRegistry(registry_config(url))
    replica = RedisRegistry(registry_config(url))
    try:
        await replica.start()
        await _two_replicas_agree(writer, replica, san_cert)
    finally:
        await writer.close()
        await replica.close()
        server.stop()


# ------------------------------------------------------------------ pasted thumbprints, over TLS


def _clients_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "clients", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_pasted_thumbprints_are_stored_normalised_and_match_over_tls(
    make_gateway: MakeGateway, redis_server: RedisServer, raw: aioredis.Redis, pki: Pki
) -> None:
    """`clients add --thumbprint` in openssl, Windows and upper-case forms, into Redis:
    stored as 40 lowercase digits, and each certificate served as its client."""
    gw = await make_gateway(
        clients=[],
        extra={"registry": {"kind": "redis", "url": redis_server.url, "key_prefix": PREFIX}},
    )
    certs = {source: pki.client(f"redis-tp-{source}") for source in pasted_thumbprints("0" * 40)}
    keys = KeySchema(PREFIX)
    for source, cert in certs.items():
        pasted = pasted_thumbprints(cert.thumbprint)[source]
        added = _clients_cli(gw.config_path, "add", f"tb.{source}", "--thumbprint", pasted)
        assert added.returncode == 0, added.stderr
        doc = json.loads(text(await raw.hget(keys.clients, f"tb.{source}")))
        assert doc["secrets"] == [{"type": "X509CertificateThumbprint", "value": cert.thumbprint}]

    # A document written as pasted (an older version, or by hand): read normalised.
    legacy = pki.client("redis-tp-legacy")
    doc = {
        "client_id": "tb.legacy",
        "allowed_grant_types": ["client_credentials"],
        "allowed_scopes": ["api1"],
        "secrets": [
            {
                "type": "X509CertificateThumbprint",
                "value": pasted_thumbprints(legacy.thumbprint)["openssl"],
            }
        ],
    }
    await raw.hset(keys.clients, "tb.legacy", json.dumps(doc))
    await raw.hset(keys.index, f"tp:{legacy.thumbprint}", "tb.legacy")
    certs["legacy"] = legacy

    for source, cert in certs.items():
        async with gw.session(cert) as session, session.get(gw.url + "/tb") as r:
            body = await r.json()
        assert r.status == 200, (source, body)
        assert echoed_headers(body)["x-client-id"] == [f"tb.{source}"]
