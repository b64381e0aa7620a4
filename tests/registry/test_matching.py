"""gateway.registry.matching: certificate identity → client, fail closed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from gateway.registry.matching import ClientIndex, MatchResult
from gateway.registry.model import Client, Secret, parse_client
from gateway.trust.identity import CertificateIdentity, identity_from_der
from tests.conftest import name_secret, registry_client, thumbprint_secret
from tests.pki import Issued, Pki, dn

NOW = dt.datetime.now(dt.UTC)
CLIENT_DN = "CN=client, OU=production, O=company"
TEST_CA = "CN=Test Root CA, O=Test"


def _client(client_id: str, *secrets: dict[str, Any], **fields: Any) -> Client:
    return parse_client(registry_client(client_id, *secrets, **fields))


def _identity(issued: Issued) -> CertificateIdentity:
    return identity_from_der(issued.der)


def _match(clients: list[Client], issued: Issued, *, exact_only: bool = False) -> MatchResult:
    return ClientIndex(clients).match(_identity(issued), exact_only=exact_only, now=NOW)


@pytest.fixture(scope="module")
def full_cert(pki: Pki) -> Issued:
    """A CA-issued client carrying every kind of SAN."""
    return pki.client(
        "client",
        dns=["api.EXAMPLE.com"],
        uris=["spiffe://example.org/ns/prod/sa/client"],
        ips=["2001:db8::1"],
        emails=["ops@Example.COM"],
    )


@pytest.fixture(scope="module")
def self_signed(pki: Pki) -> Issued:
    return pki.certificate(dn("self", ou=None), self_signed=True)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("other-pki"), ca_name="Other CA")


# Secrets that each match full_cert through a different lookup key.
PKI_SECRETS = [
    name_secret("cn=CLIENT; ou=production; o=company"),
    {"type": "X509SanDns", "value": "API.example.com."},
    {"type": "X509SanUri", "value": "spiffe://example.org/ns/prod/sa/client"},
    {"type": "X509SanIp", "value": "2001:0db8:0000::0001"},
    {"type": "X509SanEmail", "value": "ops@example.com"},
]


@pytest.mark.parametrize("secret", PKI_SECRETS, ids=[s["type"] for s in PKI_SECRETS])
def test_each_pki_secret_type_matches_a_ca_issued_cert(
    full_cert: Issued, secret: dict[str, str]
) -> None:
    client = _client("api", secret)
    result = _match([client], full_cert)
    assert result.client is client
    assert result.reason == ""
    (m,) = result.matches
    assert m.secret is client.secrets[0]
    assert m.auth_method == "tls_client_auth"


@pytest.mark.parametrize("secret", PKI_SECRETS, ids=[s["type"] for s in PKI_SECRETS])
def test_unverified_certificates_never_match_pki_secret_types(
    full_cert: Issued, secret: dict[str, str]
) -> None:
    # Its chain did not verify (say, self-signed): no chain vouches
    # for its names (RFC 8705 §2.1 needs one).
    result = _match([_client("api", secret)], full_cert, exact_only=True)
    assert result.client is None and result.matches == ()
    assert f"an unverified certificate cannot match {secret['type']} of api" in result.reason


@pytest.mark.parametrize("secret", PKI_SECRETS, ids=[s["type"] for s in PKI_SECRETS])
@pytest.mark.parametrize("shape", ["ca-true", "key-cert-sign"])
def test_a_certificate_that_can_issue_never_matches_pki_secret_types(
    pki: Pki, secret: dict[str, str], shape: str
) -> None:
    # RFC 5280 §4.2.1.9: same names as full_cert, but its key could mint leaves.
    signer = pki.client(
        "client",
        ca=shape == "ca-true",
        key_cert_sign=True,
        dns=["api.EXAMPLE.com"],
        uris=["spiffe://example.org/ns/prod/sa/client"],
        ips=["2001:db8::1"],
        emails=["ops@Example.COM"],
    )
    assert _identity(signer).is_ca
    result = _match([_client("api", secret)], signer)
    assert result.client is None and result.matches == ()
    assert f"can issue certificates, so it cannot match {secret['type']} of api" in result.reason
    # Registered by thumbprint, that one certificate is the client, whatever it can sign.
    by_thumbprint = _client("self", thumbprint_secret(signer.thumbprint))
    assert _match([by_thumbprint], signer).client is by_thumbprint


@pytest.mark.parametrize("pinned", [False, True])
def test_thumbprint_matches_verified_or_not(self_signed: Issued, pinned: bool) -> None:
    client = _client("self", thumbprint_secret(self_signed.thumbprint.upper()))
    result = _match([client], self_signed, exact_only=pinned)
    assert result.client is client
    assert result.matches[0].auth_method == "self_signed_tls_client_auth"


def test_thumbprint_of_another_certificate_does_not_match(
    self_signed: Issued, full_cert: Issued
) -> None:
    result = _match([_client("self", thumbprint_secret(self_signed.thumbprint))], full_cert)
    assert result.client is None
    assert result.reason == "no registered client matches the certificate"


def test_email_local_part_is_case_sensitive(full_cert: Issued) -> None:
    result = _match(
        [_client("api", {"type": "X509SanEmail", "value": "OPS@example.com"})], full_cert
    )
    assert result.client is None


def test_dn_injection_does_not_match(pki: Pki) -> None:
    # A CN that contains ", OU=production" is one RDN, not two.
    injected = pki.certificate(dn("client, OU=production", ou=None))
    result = _match([_client("api", name_secret(CLIENT_DN))], injected)
    assert result.client is None
    assert result.reason == "no registered client matches the certificate"


def test_dn_with_extra_or_missing_rdn_does_not_match(pki: Pki) -> None:
    shorter = pki.certificate(dn("client", ou=None))
    assert _match([_client("api", name_secret(CLIENT_DN))], shorter).client is None


def test_issuer_pin(full_cert: Issued, other_pki: Pki) -> None:
    pinned_to_test_ca = _client("api", name_secret(CLIENT_DN), issuer="cn=test root ca, o=test")
    assert _match([pinned_to_test_ca], full_cert).client is pinned_to_test_ca

    # The same DN issued by another CA (one that client_ca also trusts).
    same_dn_other_ca = other_pki.client("client")
    result = _match([pinned_to_test_ca], same_dn_other_ca)
    assert result.client is None
    assert result.reason == "issuer does not match the pin of client api"

    pinned_elsewhere = _client("api", name_secret(CLIENT_DN), issuer="CN=Other CA, O=Test")
    assert _match([pinned_elsewhere], full_cert).client is None
    assert _match([pinned_elsewhere], same_dn_other_ca).client is pinned_elsewhere


def test_disabled_client(full_cert: Issued) -> None:
    result = _match([_client("api", name_secret(CLIENT_DN), enabled=False)], full_cert)
    assert result.client is None
    assert result.reason == "client api is disabled"


def test_expired_secret(full_cert: Issued) -> None:
    expired = {**name_secret(CLIENT_DN), "expiration": (NOW - dt.timedelta(seconds=1)).isoformat()}
    result = _match([_client("api", expired)], full_cert)
    assert result.client is None
    assert result.reason == "secret of client api expired"

    later = {**name_secret(CLIENT_DN), "expiration": (NOW + dt.timedelta(days=1)).isoformat()}
    assert _match([_client("api", later)], full_cert).client is not None


def test_several_secrets_one_expired_one_current(full_cert: Issued) -> None:
    old = {**name_secret(CLIENT_DN), "expiration": "2000-01-01T00:00:00Z"}
    current = {"type": "X509SanUri", "value": "spiffe://example.org/ns/prod/sa/client"}
    client = _client("api", old, current)
    result = _match([client], full_cert)
    assert result.client is client
    assert [m.secret.type for m in result.matches] == ["X509SanUri"]


def test_several_matching_secrets_of_one_client_are_one_client(full_cert: Issued) -> None:
    client = _client("api", *PKI_SECRETS)
    result = _match([client], full_cert)
    assert result.client is client
    assert sorted(m.secret.type for m in result.matches) == sorted(s["type"] for s in PKI_SECRETS)


def test_rotation_two_thumbprints(pki: Pki) -> None:
    old = pki.certificate(dn("svc", ou=None), self_signed=True)
    new = pki.certificate(dn("svc", ou=None), self_signed=True)
    client = _client("svc", thumbprint_secret(old.thumbprint), thumbprint_secret(new.thumbprint))
    for cert in (old, new):
        result = _match([client], cert, exact_only=True)
        assert result.client is client
        assert result.matches[0].secret.match_value == cert.thumbprint


def test_ambiguous_match_names_no_client(full_cert: Issued) -> None:
    a = _client("a", name_secret(CLIENT_DN))
    b = _client("b", {"type": "X509SanDns", "value": "api.example.com"})
    result = _match([a, b], full_cert)
    assert result.client is None  # the caller refuses rather than pick one
    assert {m.client.client_id for m in result.matches} == {"a", "b"}
    assert result.for_client("b") is not None and result.for_client("c") is None


def test_disabled_duplicate_does_not_make_it_ambiguous(full_cert: Issued) -> None:
    live = _client("live", name_secret(CLIENT_DN))
    retired = _client("retired", name_secret(CLIENT_DN), enabled=False)
    assert _match([retired, live], full_cert).client is live


def test_shared_secrets_lists_keys_claimed_by_several_clients() -> None:
    index = ClientIndex(
        [
            _client("a", name_secret(CLIENT_DN)),
            _client("b", name_secret("cn=client,ou=production,o=company")),
            _client("c", name_secret("CN=other")),
        ]
    )
    ((_, ids),) = index.shared_secrets()
    assert ids == ["a", "b"]


def test_duplicate_client_id_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate client_id 'a'"):
        ClientIndex([_client("a", name_secret("CN=x")), _client("a", name_secret("CN=y"))])


def test_get_and_clients() -> None:
    a, b = _client("a", name_secret("CN=a")), _client("b", name_secret("CN=b"))
    index = ClientIndex([a, b])
    assert index.get("a") is a and index.get("z") is None
    assert index.clients() == [a, b]
    assert len(index) == 2


def test_index_of_100k_clients_yields_only_the_hits(full_cert: Issued) -> None:
    # Noise of the same secret types as the certificate's lookup keys
    # (thumbprints, SANs, DNs differing only in CN).  No timing: the index
    # must hand back the target's two secrets and nothing else.
    noise = [
        Client(
            client_id=f"noise-{i}",
            secrets=(
                Secret(type="X509CertificateThumbprint", value=f"{i:040x}", match_value=f"{i:040x}")
                if i % 2
                else Secret(type="X509SanDns", value=f"h{i}.example", match_value=f"h{i}.example"),
            ),
        )
        for i in range(100_000)
    ]
    noise += [
        _client(f"dn-{i}", name_secret(f"CN=client-{i}, OU=production, O=company"))
        for i in range(200)
    ]
    target = _client(
        "target", name_secret(CLIENT_DN), {"type": "X509SanIp", "value": "2001:db8::1"}
    )
    index = ClientIndex([*noise[:50_000], target, *noise[50_000:]])
    assert len(index) == 100_201

    hits = index.candidates(_identity(full_cert))
    assert hits == [(target, target.secrets[0]), (target, target.secrets[1])]
    assert index.match(_identity(full_cert), exact_only=False, now=NOW).client is target
