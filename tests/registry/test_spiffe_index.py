"""SPIFFE secrets in the index: exact IDs and wildcard prefixes, YAML index and Redis alike.

Unit level: the certificate → candidates → ``evaluate`` path with a stub
``ChainFacts``, so each trust answer can be set by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.registry.config import RegistryConfig
from gateway.registry.matching import ClientIndex, MatchResult
from gateway.registry.model import Client, parse_client
from gateway.registry.redis_store import RedisRegistry
from gateway.trust.identity import identity_from_der
from tests.pki import Pki
from tests.registry.conftest import RedisServer, require_redis_server


@dataclass
class Facts:
    """A ChainFacts whose answers the test sets."""

    domains: frozenset[str | None] = frozenset({None, "example.org"})
    svid_problem_text: str | None = None

    def chains_to(self, trust_domain: str | None) -> bool:
        return trust_domain in self.domains

    def issuer_matches(self, trust_domain: str | None, dn_key: object, sha256: str | None) -> bool:
        return True

    def trust_domain_known(self, trust_domain: str) -> bool:
        return True

    def svid_problem(self) -> str | None:
        return self.svid_problem_text


def spiffe_client(client_id: str, value: str) -> Client:
    return parse_client(
        {"client_id": client_id, "secrets": [{"type": "X509SanUri", "value": value}]}
    )


CLIENTS = [
    spiffe_client("exact", "spiffe://example.org/ns/prod/sa/api"),
    spiffe_client("prod", "spiffe://example.org/ns/prod/*"),
    spiffe_client("domain", "spiffe://other.org/*"),
]

CASES = [
    ("spiffe://example.org/ns/prod/sa/api", {"exact", "prod"}),  # both name it: ambiguous
    ("spiffe://example.org/ns/prod/sa/web", {"prod"}),
    ("spiffe://example.org/ns/prod", set()),
    ("spiffe://example.org/ns/production/x", set()),
    ("spiffe://other.org/anything/at/all", set()),  # other.org does not chain (Facts)
]


def _ids(result: MatchResult) -> set[str]:
    return {m.client.client_id for m in result.matches}


@pytest.mark.parametrize(("uri", "expected"), CASES)
def test_index(pki: Pki, uri: str, expected: set[str]) -> None:
    identity = identity_from_der(pki.client("w", uris=[uri]).der)
    result = ClientIndex(CLIENTS).match(
        identity, exact_only=False, now=dt.datetime.now(dt.UTC), chains=Facts()
    )
    assert _ids(result) == expected


def test_other_domain_matches_once_its_bundle_vouches(pki: Pki) -> None:
    identity = identity_from_der(pki.client("w", uris=["spiffe://other.org/a/b"]).der)
    facts = Facts(domains=frozenset({"other.org"}))
    result = ClientIndex(CLIENTS).match(
        identity, exact_only=False, now=dt.datetime.now(dt.UTC), chains=facts
    )
    assert _ids(result) == {"domain"}
    bad_leaf = Facts(domains=frozenset({"other.org"}), svid_problem_text="no digitalSignature")
    result = ClientIndex(CLIENTS).match(
        identity, exact_only=False, now=dt.datetime.now(dt.UTC), chains=bad_leaf
    )
    assert result.client is None and "no digitalSignature" in result.reason


async def test_redis_finds_the_same_candidates(pki: Pki, tmp_path: Path) -> None:
    require_redis_server()
    server = RedisServer(tmp_path)
    server.start()
    registry = RedisRegistry(
        RegistryConfig(
            kind="redis",
            path=None,
            url=server.url,
            key_prefix="spiffe-test:",
            max_stale=60.0,
            cache_size=100,
        )
    )
    try:
        await registry.start()
        await registry.replace_all(CLIENTS)
        for uri, expected in CASES:
            identity = identity_from_der(pki.client("w", uris=[uri]).der)
            for _ in range(2):  # a miss, then a cache hit
                result = await registry.match(identity, exact_only=False, chains=Facts())
                assert _ids(result) == expected, uri
    finally:
        await registry.close()
        server.stop()
