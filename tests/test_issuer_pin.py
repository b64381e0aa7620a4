"""Per-client CA pinning (RFC 8705 §7.4) with two CAs that share one DN.

A client's ``issuer`` names the CA whose certificates may authenticate it.
Comparing the leaf's issuer DN is not enough: a second CA can carry the same
DN.  The pin is checked against the CA whose key verified the leaf's
signature (gateway/trust/chain.py); ``issuer_sha256`` picks one CA among several
that share a DN.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Pki
from tests.test_auth import assert_accepted_as, assert_refused
from tests.trust.test_forwarded import call, forwarded_headers

SHARED_DN = "CN=Shared CA, O=Test"
LEAF_DN = "CN=pinned-client, OU=production, O=company"


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki, Path]:
    base = tmp_path_factory.mktemp("twins")
    first = Pki(base / "first", ca_name="Shared CA")
    second = Pki(base / "second", ca_name="Shared CA")
    assert first.ca.cert.subject == second.ca.cert.subject  # one DN, two keys
    both = base / "both-cas.pem"
    both.write_bytes(first.ca.pem + second.ca.pem)
    return first, second, both


def fingerprint(pki: Pki) -> str:
    return hashlib.sha256(pki.ca.der).hexdigest()


async def test_fingerprint_pin_tells_same_dn_cas_apart(
    make_gateway: MakeGateway, twins: tuple[Pki, Pki, Path]
) -> None:
    first, second, both = twins
    gw = await make_gateway(
        clients=[
            registry_client(
                "pinned",
                name_secret(LEAF_DN),
                issuer=SHARED_DN,
                issuer_sha256=":".join(
                    fingerprint(first)[i : i + 2] for i in range(0, 64, 2)
                ).upper(),  # as `openssl x509 -fingerprint -sha256` prints it
            )
        ],
        tls={"client_ca": str(both)},
    )
    await assert_accepted_as(gw, first.client("pinned-client"), "pinned")
    # Trusted by the listener, same issuer DN, same subject: not the CA the client names.
    await assert_refused(gw, second.client("pinned-client"), 403, "access_denied")


async def test_dn_pin_accepts_every_trusted_ca_of_that_name(
    make_gateway: MakeGateway, twins: tuple[Pki, Pki, Path]
) -> None:
    """A re-keyed CA keeps its DN: a DN-only pin follows it (issuer_sha256 does not)."""
    first, second, both = twins
    gw = await make_gateway(
        clients=[registry_client("pinned", name_secret(LEAF_DN), issuer=SHARED_DN)],
        tls={"client_ca": str(both)},
    )
    await assert_accepted_as(gw, first.client("pinned-client"), "pinned")
    await assert_accepted_as(gw, second.client("pinned-client"), "pinned")


async def test_same_dn_ca_outside_client_ca_does_not_pass(
    make_gateway: MakeGateway, twins: tuple[Pki, Pki, Path]
) -> None:
    """The twin is trusted for a SPIFFE domain only: its leaves pass the handshake,
    carry the pinned issuer DN, and still never match the client."""
    first, second, _ = twins
    gw = await make_gateway(
        clients=[
            registry_client("pinned", name_secret(LEAF_DN), issuer=SHARED_DN),
            registry_client(
                "by-san", {"type": "X509SanDns", "value": "svc.example"}, issuer=SHARED_DN
            ),
        ],
        tls={
            "client_ca": str(first.ca.cert_path),
            "spiffe_bundles": {"twin.example": str(second.ca.cert_path)},
        },
    )
    await assert_accepted_as(gw, first.client("pinned-client"), "pinned")
    await assert_refused(gw, second.client("pinned-client"), 403, "access_denied")
    await assert_accepted_as(gw, first.client("svc", dns=["svc.example"]), "by-san")
    await assert_refused(gw, second.client("svc", dns=["svc.example"]), 403, "access_denied")


async def test_forwarded_certificate_from_the_twin_ca(
    make_gateway: MakeGateway, twins: tuple[Pki, Pki, Path]
) -> None:
    first, second, _ = twins
    gw = await make_gateway(
        clients=[registry_client("pinned", name_secret(LEAF_DN), issuer=SHARED_DN)],
        tls={"client_ca": str(first.ca.cert_path)},
        listener={
            "forwarded_client_cert": {"trusted_proxies": ["127.0.0.1/32"], "format": "rfc9440"}
        },
    )
    status, _ = await call(gw, forwarded_headers("rfc9440", first.client("pinned-client")))
    assert status == 200
    status, body = await call(gw, forwarded_headers("rfc9440", second.client("pinned-client")))
    assert (status, body["error"]) == (403, "access_denied")


async def test_wrong_fingerprint_refuses(
    make_gateway: MakeGateway, twins: tuple[Pki, Pki, Path]
) -> None:
    first, second, both = twins
    gw = await make_gateway(
        clients=[
            registry_client("pinned", name_secret(LEAF_DN), issuer_sha256=fingerprint(second))
        ],
        tls={"client_ca": str(both)},
    )
    await assert_refused(gw, first.client("pinned-client"), 403, "access_denied")
    await assert_accepted_as(gw, second.client("pinned-client"), "pinned")
