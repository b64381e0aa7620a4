"""gateway.registry.model: the IdentityServer-shaped client model and its validation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from gateway.registry.model import Client, ClientError, parse_client
from gateway.trust.dn import parse_dn
from tests.conftest import name_secret, registry_client, thumbprint_secret

THUMBPRINT = "bca0d040847f843c5ee0fa6eb494837470155868"


def _problems(data: Any) -> list[str]:
    with pytest.raises(ClientError) as info:
        parse_client(data)
    return info.value.problems


def test_minimal_client_and_defaults() -> None:
    client = parse_client({"client_id": "c", "secrets": [thumbprint_secret(THUMBPRINT)]})
    assert client.client_id == "c"
    assert client.enabled is True
    assert client.allowed_grant_types == ("client_credentials",)
    assert client.allowed_scopes == ()
    assert client.issuer is None
    assert client.access_token_lifetime is None
    assert dict(client.claims) == {}
    (secret,) = client.secrets
    assert (secret.type, secret.match_value, secret.expiration) == (
        "X509CertificateThumbprint",
        THUMBPRINT,
        None,
    )


def test_spec_registry_example_parses() -> None:
    client = parse_client(
        {
            "client_id": "mtls.client",
            "allowed_grant_types": ["client_credentials"],
            "allowed_scopes": ["api1"],
            "secrets": [
                {
                    "type": "X509CertificateName",
                    "value": "CN=client, OU=production, O=company",
                    "description": "client.dn",
                },
                {
                    "type": "X509CertificateThumbprint",
                    "value": THUMBPRINT,
                    "description": "mtls.tb",
                },
            ],
        }
    )
    name, thumb = client.secrets
    assert name.dn is not None
    assert name.dn.key == parse_dn("CN=client, OU=production, O=company").key
    assert (name.description, thumb.description) == ("client.dn", "mtls.tb")
    assert client.allowed_scopes == ("api1",)


def test_every_problem_is_reported_and_names_its_key() -> None:
    problems = _problems(
        {
            "client_id": "broken",
            "colour": "blue",
            "allowed_grant_types": ["client_credentials", "password"],
            "claims": {"sub": "someone-else", "tenant": "t1"},
            "issuer": 'CN="unterminated',
            "access_token_lifetime": -5,
            "enabled": "yes",
            "secrets": [
                thumbprint_secret("not-a-thumbprint"),
                name_secret("FOO=bar"),
                {"type": "X509SanIp", "value": "10.0.0.300"},
                {"type": "X509Password", "value": "x"},
                {"type": "X509SanDns", "value": "api.example.com", "kind": "dns"},
                {"type": "X509CertificateThumbprint"},
                {"type": "X509SanEmail", "value": "no-at-sign"},
                {"type": "X509SanUri", "value": "not a uri"},
                {"type": "X509CertificateThumbprint", "value": THUMBPRINT, "expiration": "soon"},
            ],
        }
    )
    expected_prefixes = [
        "colour: unknown key",
        "enabled: expected true or false",
        "allowed_grant_types: unsupported grant type 'password'",
        "issuer: unterminated quoted value",
        "access_token_lifetime: expected a positive number of seconds",
        "claims.sub: set by the token service",
        "secrets[0].value: expected a SHA-1 thumbprint",
        "secrets[1].value: unknown attribute type 'FOO'",
        "secrets[2].value: expected an IPv4 or IPv6 address",
        "secrets[3].type: expected one of X509CertificateName, ",
        "secrets[4].kind: unknown key",
        "secrets[5].value: required",
        "secrets[6].value: expected an email address",
        "secrets[7].value: expected an absolute URI",
        "secrets[8].expiration: ",
    ]
    assert len(problems) == len(expected_prefixes), problems
    for problem, prefix in zip(problems, expected_prefixes, strict=True):
        assert problem.startswith(prefix), (problem, prefix)
    # The non-reserved claim is not reported.
    assert not any("tenant" in p for p in problems)


@pytest.mark.parametrize(
    "claim", ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "cnf"]
)
def test_reserved_claims_are_refused(claim: str) -> None:
    problems = _problems(registry_client("c", thumbprint_secret(THUMBPRINT), claims={claim: "x"}))
    assert problems == [f"claims.{claim}: set by the token service, cannot be overridden"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"secrets": [thumbprint_secret(THUMBPRINT)]}, "client_id: required"),
        (
            {"client_id": " padded", "secrets": [thumbprint_secret(THUMBPRINT)]},
            "client_id: must not",
        ),
        ({"client_id": "a b", "secrets": [thumbprint_secret(THUMBPRINT)]}, "client_id: must not"),
        ({"client_id": "c"}, "secrets: required"),
        ({"client_id": "c", "secrets": []}, "secrets: required"),
        ({"client_id": "c", "secrets": ["text"]}, "secrets[0]: expected a mapping"),
        (
            {"client_id": "c", "secrets": [thumbprint_secret(THUMBPRINT)], "allowed_scopes": [1]},
            "allowed_scopes: expected a list of strings",
        ),
        (
            {"client_id": "c", "secrets": [thumbprint_secret(THUMBPRINT)], "claims": ["a"]},
            "claims: expected a mapping",
        ),
        (
            {
                "client_id": "c",
                "secrets": [thumbprint_secret(THUMBPRINT)],
                "access_token_lifetime": True,
            },
            "access_token_lifetime: expected a positive number",
        ),
    ],
)
def test_single_problems(data: dict[str, Any], problem: str) -> None:
    problems = _problems(data)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_not_a_mapping() -> None:
    assert _problems(["client_id", "c"]) == ["expected a mapping with client_id and secrets"]


@pytest.mark.parametrize(
    "pasted",
    [
        "BCA0D040847F843C5EE0FA6EB494837470155868",
        "bc:a0:d0:40:84:7f:84:3c:5e:e0:fa:6e:b4:94:83:74:70:15:58:68",
        "BC A0 D0 40 84 7F 84 3C 5E E0 FA 6E B4 94 83 74 70 15 58 68",
        " bca0d040847f843c5ee0fa6eb494837470155868\t",
        "BC\u00a0A0\u00a0D0 40847F843C5EE0FA6EB494837470155868",  # no-break spaces
        "bca0d040847f843c5ee0\nfa6eb494837470155868",  # a YAML value folded over two lines
    ],
)
def test_thumbprint_normalisation(pasted: str) -> None:
    client = parse_client(registry_client("c", thumbprint_secret(pasted)))
    (secret,) = client.secrets
    assert secret.match_value == THUMBPRINT
    # Stored, exported and written to Redis in the one form that matches.
    assert secret.value == THUMBPRINT
    assert client.to_dict()["secrets"] == [
        {"type": "X509CertificateThumbprint", "value": THUMBPRINT}
    ]


@pytest.mark.parametrize(
    "bad",
    [
        THUMBPRINT[:-1],  # 39 digits
        THUMBPRINT + "0",  # 41 digits
        "g" + THUMBPRINT[1:],  # not hex
        "a4" * 32,  # a SHA-256, not a SHA-1
        "bc-a0-d0-40-84-7f-84-3c-5e-e0-fa-6e-b4-94-83-74-70-15-58-68",
        "\u200e" + THUMBPRINT,  # the invisible mark Windows' certificate dialog copies
    ],
)
def test_bad_thumbprints(bad: str) -> None:
    (problem,) = _problems(registry_client("c", thumbprint_secret(bad)))
    assert problem.startswith("secrets[0].value: expected a SHA-1 thumbprint")


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (THUMBPRINT[:-1], "got 39 digits"),
        ("a4" * 32, "64 digits, a SHA-256"),
        ("\u200e" + THUMBPRINT, "contains U+200E (invisible"),
        ("bc-a0" + THUMBPRINT[4:], "contains '-'"),
    ],
)
def test_bad_thumbprint_says_what_is_wrong(bad: str, says: str) -> None:
    (problem,) = _problems(registry_client("c", thumbprint_secret(bad)))
    assert says in problem


@pytest.mark.parametrize(
    ("kind", "value", "match_value"),
    [
        (
            "X509CertificateName",
            "cn=client;ou=production;o=company",
            "CN=client, OU=production, O=company",
        ),
        ("X509SanDns", " API.Example.COM. ", "api.example.com"),
        (
            "X509SanUri",
            " spiffe://example.org/ns/prod/sa/api ",
            "spiffe://example.org/ns/prod/sa/api",
        ),
        ("X509SanIp", "2001:0DB8:0000::0001", "2001:db8::1"),
        ("X509SanIp", " 10.1.2.3 ", "10.1.2.3"),
        # RFC 5280 §4.2.1.6: the domain is case-insensitive, the local part is not.
        ("X509SanEmail", "Ops@Example.COM", "Ops@example.com"),
    ],
)
def test_secret_values_are_normalised(kind: str, value: str, match_value: str) -> None:
    (secret,) = parse_client(registry_client("c", {"type": kind, "value": value})).secrets
    assert secret.match_value == match_value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2030-01-02T03:04:05Z", dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2030-01-02T05:04:05+02:00", dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2030-01-02", dt.datetime(2030, 1, 2, tzinfo=dt.UTC)),
        (dt.date(2030, 1, 2), dt.datetime(2030, 1, 2, tzinfo=dt.UTC)),
        (dt.datetime(2030, 1, 2, 3, 4, 5), dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    ],
)
def test_expiration_forms(raw: object, expected: dt.datetime) -> None:
    secret_data = {**thumbprint_secret(THUMBPRINT), "expiration": raw}
    (secret,) = parse_client({"client_id": "c", "secrets": [secret_data]}).secrets
    assert secret.expiration == expected
    assert not secret.expired(expected - dt.timedelta(seconds=1))
    assert secret.expired(expected)


def test_issuer_is_parsed() -> None:
    client = parse_client(
        registry_client("c", thumbprint_secret(THUMBPRINT), issuer="cn=Test Root CA;o=Test")
    )
    assert client.issuer is not None
    assert client.issuer.text == "CN=Test Root CA, O=Test"


def test_to_dict_round_trips() -> None:
    client = parse_client(
        registry_client(
            "full",
            name_secret("CN=client, OU=production, O=company"),
            {
                **thumbprint_secret(THUMBPRINT.upper()),
                "expiration": "2030-01-02T03:04:05Z",
                "description": "old",
            },
            {"type": "X509SanUri", "value": "spiffe://example.org/a"},
            issuer="CN=Test Root CA, O=Test",
            enabled=False,
            access_token_lifetime=600,
            claims={"tenant": "t1", "roles": ["a", "b"]},
            client_name="Full client",
            description="every field",
        )
    )
    again = parse_client(client.to_dict())
    assert again == client
    assert isinstance(again, Client)
