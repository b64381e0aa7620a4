"""SPIFFE: ID parsing, then the X.509-SVID matching table over real TLS with per-domain bundles.

Three CAs: the listener's client_ca (Test Root CA), example.org's bundle and
other.org's bundle.  All three are in the handshake's trust store; which one
issued a certificate decides which secrets it may match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.registry.model import ClientError, parse_client
from gateway.trust.spiffe import (
    SpiffeId,
    SpiffeIdError,
    parse_spiffe_id,
    parse_spiffe_pattern,
    prefix_lookup_values,
)
from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki
from tests.test_auth import assert_accepted_as, assert_refused

# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spiffe://example.org/ns/prod/sa/api", SpiffeId("example.org", "/ns/prod/sa/api")),
        ("spiffe://example.org", SpiffeId("example.org", "")),
        ("spiffe://td_1.example-2/x.y_z-1", SpiffeId("td_1.example-2", "/x.y_z-1")),
    ],
)
def test_valid_ids(text: str, expected: SpiffeId) -> None:
    assert parse_spiffe_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://example.org/a",
        "SPIFFE://example.org/a",  # certificates must use the lowercase scheme
        "spiffe://EXAMPLE.org/a",  # and a lowercase trust domain (SPIFFE-ID §2.1)
        "spiffe:///a",
        "spiffe://user@example.org/a",
        "spiffe://example.org:8443/a",
        "spiffe://example.org/a?x=1",
        "spiffe://example.org/a#f",
        "spiffe://example.org/",
        "spiffe://example.org/a//b",
        "spiffe://example.org/a/../b",
        "spiffe://example.org/a/./b",
        "spiffe://example.org/a%20b",
        "spiffe://exa mple.org/a",
        "spiffe://example.org/" + "a" * 2100,
    ],
)
def test_invalid_ids(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        parse_spiffe_id(text)


def test_patterns() -> None:
    wildcard = parse_spiffe_pattern("SPIFFE://Example.org/ns/prod/*")
    assert str(wildcard) == "spiffe://example.org/ns/prod/*"
    assert wildcard.matches(SpiffeId("example.org", "/ns/prod/sa/api"))
    assert wildcard.matches(SpiffeId("example.org", "/ns/prod/a/b/c"))
    assert not wildcard.matches(SpiffeId("example.org", "/ns/prod"))  # not the prefix itself
    assert not wildcard.matches(SpiffeId("example.org", "/ns/production/x"))
    assert not wildcard.matches(SpiffeId("other.org", "/ns/prod/x"))
    whole_domain = parse_spiffe_pattern("spiffe://example.org/*")
    assert whole_domain.matches(SpiffeId("example.org", "/x"))
    assert not whole_domain.matches(SpiffeId("example.org", ""))
    for bad in ("spiffe://example.org/ns/*/sa", "spiffe://example.org/ns*", "spiffe://*/a"):
        with pytest.raises(SpiffeIdError):
            parse_spiffe_pattern(bad)


def test_prefix_lookup_values_walk_the_ancestors() -> None:
    assert list(prefix_lookup_values(SpiffeId("td", "/a/b/c"))) == [
        "spiffe://td/",
        "spiffe://td/a/",
        "spiffe://td/a/b/",
    ]


def test_registry_refuses_malformed_spiffe_secrets() -> None:
    with pytest.raises(ClientError) as exc:
        parse_client(registry_client("c", {"type": "X509SanUri", "value": "spiffe://td/a/../b"}))
    assert "invalid SPIFFE ID" in exc.value.problems[0]


def test_registry_normalises_spiffe_secrets() -> None:
    client = parse_client(
        registry_client("c", {"type": "X509SanUri", "value": "spiffe://Example.ORG/ns/x"})
    )
    assert client.secrets[0].match_value == "spiffe://example.org/ns/x"


# --- the matching table, over real TLS --------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    base = tmp_path_factory.mktemp("spiffe")
    return {
        "example.org": Pki(base / "example", ca_name="example.org SPIFFE CA"),
        "other.org": Pki(base / "other", ca_name="other.org SPIFFE CA"),
    }


def svid(issuer: Pki, *uris: str, cn: str = "workload") -> Issued:
    return issuer.client(cn, uris=list(uris))


CLIENTS = [
    registry_client(
        "exact", {"type": "X509SanUri", "value": "spiffe://example.org/ns/prod/sa/api"}
    ),
    registry_client("wild", {"type": "X509SanUri", "value": "spiffe://example.org/ns/batch/*"}),
    registry_client("other", {"type": "X509SanUri", "value": "spiffe://other.org/svc"}),
    registry_client("by-dn", name_secret("CN=dn-client, OU=production, O=company")),
]


@pytest.fixture
async def spiffe_gateway(make_gateway: MakeGateway, domains: dict[str, Pki]) -> Any:
    return await make_gateway(
        clients=CLIENTS,
        tls={"spiffe_bundles": {domain: str(pki.ca.cert_path) for domain, pki in domains.items()}},
    )


def _case(issuer: str, *uris: str, cn: str = "workload") -> tuple[str, tuple[str, ...], str]:
    return issuer, uris, cn


# (certificate issuer, URI SANs, CN) → expected client_id, or None for 403
TABLE: list[tuple[str, tuple[tuple[str, tuple[str, ...], str], str | None]]] = [
    ("exact", (_case("example.org", "spiffe://example.org/ns/prod/sa/api"), "exact")),
    (
        "exact, trust domain in capitals",  # not a SPIFFE ID (tests/security/test_spiffe_case.py)
        (_case("example.org", "spiffe://EXAMPLE.ORG/ns/prod/sa/api"), None),
    ),
    ("wildcard", (_case("example.org", "spiffe://example.org/ns/batch/job/7"), "wild")),
    ("wildcard, one level", (_case("example.org", "spiffe://example.org/ns/batch/x"), "wild")),
    ("wildcard prefix itself", (_case("example.org", "spiffe://example.org/ns/batch"), None)),
    ("wildcard sibling", (_case("example.org", "spiffe://example.org/ns/batchx/a"), None)),
    (
        "two URI SANs",
        (
            _case("example.org", "spiffe://example.org/ns/prod/sa/api", "https://example.org/x"),
            None,
        ),
    ),
    (
        "two SPIFFE IDs",
        (
            _case(
                "example.org",
                "spiffe://example.org/ns/prod/sa/api",
                "spiffe://example.org/ns/batch/a",
            ),
            None,
        ),
    ),
    ("wrong trust domain", (_case("example.org", "spiffe://example.com/ns/prod/sa/api"), None)),
    ("right ID, wrong bundle", (_case("other.org", "spiffe://example.org/ns/prod/sa/api"), None)),
    ("right ID, client_ca", (_case("client_ca", "spiffe://example.org/ns/prod/sa/api"), None)),
    ("other domain, own bundle", (_case("other.org", "spiffe://other.org/svc"), "other")),
    ("path with more below", (_case("example.org", "spiffe://example.org/ns/prod/sa/api/x"), None)),
    # A PKI DN secret needs client_ca: a bundle CA cannot mint it.
    ("DN from a bundle CA", (_case("example.org", cn="dn-client"), None)),
    ("DN from client_ca", (_case("client_ca", cn="dn-client"), "by-dn")),
]


@pytest.mark.parametrize(("label", "case"), TABLE, ids=[t[0] for t in TABLE])
async def test_svid_matching_table(
    spiffe_gateway: Any,
    domains: dict[str, Pki],
    pki: Pki,
    label: str,
    case: tuple[tuple[str, tuple[str, ...], str], str | None],
) -> None:
    (issuer, uris, cn), expected = case
    issuing = pki if issuer == "client_ca" else domains[issuer]
    cert = svid(issuing, *uris, cn=cn)
    if expected is None:
        await assert_refused(spiffe_gateway, cert, 403, "access_denied")
    else:
        await assert_accepted_as(spiffe_gateway, cert, expected)


async def test_unknown_trust_domain_is_refused_when_bundles_are_configured(
    make_gateway: MakeGateway, domains: dict[str, Pki]
) -> None:
    gw = await make_gateway(
        clients=[registry_client("c", {"type": "X509SanUri", "value": "spiffe://third.org/a"})],
        tls={"spiffe_bundles": {"example.org": str(domains["example.org"].ca.cert_path)}},
    )
    # Issued by a bundle the listener trusts, for a domain that has no bundle.
    await assert_refused(
        gw, svid(domains["example.org"], "spiffe://third.org/a"), 403, "access_denied"
    )


async def test_spiffe_json_bundle(
    make_gateway: MakeGateway, domains: dict[str, Pki], tmp_path: Path
) -> None:
    import base64
    import json

    ca = domains["example.org"].ca
    bundle = tmp_path / "example.org.json"
    bundle.write_text(
        json.dumps(
            {
                "keys": [
                    {"use": "x509-svid", "kty": "EC", "x5c": [base64.b64encode(ca.der).decode()]},
                    {"use": "jwt-svid", "kty": "EC", "kid": "ignored"},
                ],
                "spiffe_sequence": 1,
            }
        )
    )
    gw = await make_gateway(
        clients=CLIENTS[:1], tls={"spiffe_bundles": {"example.org": str(bundle)}}
    )
    await assert_accepted_as(
        gw, svid(domains["example.org"], "spiffe://example.org/ns/prod/sa/api"), "exact"
    )


async def test_without_bundles_client_ca_serves_every_trust_domain(
    make_gateway: MakeGateway, pki: Pki
) -> None:
    gw = await make_gateway(clients=CLIENTS)
    await assert_accepted_as(gw, svid(pki, "spiffe://example.org/ns/batch/job"), "wild")
    await assert_refused(
        gw, svid(pki, "spiffe://example.org/ns/batch/job", "spiffe://x.org/y"), 403, "access_denied"
    )
