"""gateway.registry.dn_order: DNs written in openssl's RDN order are warned about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config.load import load_config
from gateway.registry.dn_order import client_ca_names, dn_order_warnings
from gateway.registry.model import Client, parse_client
from gateway.trust.dn import parse_dn
from tests.conftest import name_secret, registry_client, write_config
from tests.pki import Pki

TEST_CA_KEY = parse_dn("CN=Test Root CA, O=Test").key
CAS = [("ca.pem", TEST_CA_KEY)]


def _client(client_id: str, *secrets: dict[str, str], **fields: Any) -> Client:
    return parse_client(registry_client(client_id, *secrets, **fields))


def test_a_subject_dn_in_openssl_order_is_warned_with_the_right_order() -> None:
    (line,) = dn_order_warnings([_client("api", name_secret("O=company, OU=production, CN=api"))])
    assert line.startswith("client api: secrets[0]: DN 'O=company, OU=production, CN=api'")
    assert line.endswith("most specific first: 'CN=api, OU=production, O=company'")


def test_dns_in_the_registry_order_are_not_warned_about() -> None:
    clients = [
        _client("a", name_secret("CN=a, OU=production, O=company")),
        _client("b", name_secret("CN=b")),  # one RDN: no order to get wrong
        _client("c", name_secret("OU=x + CN=c, O=company, C=FR")),
        _client("d", {"type": "X509SanDns", "value": "d.example"}),
        _client("e", name_secret("CN=e"), issuer="CN=Test Root CA, O=Test"),
    ]
    assert dn_order_warnings(clients, CAS) == []


def test_an_issuer_is_compared_with_the_trusted_cas_as_written_and_reversed() -> None:
    reversed_issuer = _client("api", name_secret("CN=api"), issuer="O=Test, CN=Test Root CA")
    (line,) = dn_order_warnings([reversed_issuer], CAS)
    assert line == (
        "client api: issuer: 'O=Test, CN=Test Root CA' names no CA in client_ca, "
        "but reversed it is the subject of ca.pem: write 'CN=Test Root CA, O=Test'"
    )
    # A CA really named least specific first: the issuer written that way is right.
    odd_ca = [("odd.pem", parse_dn("O=Test, CN=Test Root CA").key)]
    assert dn_order_warnings([reversed_issuer], odd_ca) == []


def test_without_a_matching_ca_the_issuer_gets_the_heuristic() -> None:
    client = _client("api", name_secret("CN=api"), issuer="O=Other, CN=Other CA")
    (line,) = dn_order_warnings([client], CAS)
    assert line.startswith("client api: issuer: DN 'O=Other, CN=Other CA' looks written")


def test_client_ca_names_reads_the_listeners_ca_files(tmp_path: Path, pki: Pki) -> None:
    config, _ = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    assert client_ca_names(load_config(config, env={})) == [(str(pki.ca.cert_path), TEST_CA_KEY)]
