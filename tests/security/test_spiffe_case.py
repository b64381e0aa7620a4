"""SPIFFE trust domains are lowercase: an SVID naming ``spiffe://TD.TEST/...`` is no SVID.

SPIFFE-ID §2.1: a trust domain holds only lowercase letters, digits, ".",
"-" and "_".  An ID in another case is not a valid SPIFFE ID, so a gateway
that folded it into ``td.test`` would grant an identity that every
spec-following peer (SPIRE, Envoy's SAN matchers) reads as a different one.
Registry values are the operator's text and stay case-folded (a typo must
not silently lock a client out); certificates are held to the spec.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeGateway, registry_client
from tests.pki import Pki
from tests.test_auth import assert_accepted_as, assert_refused

WORKLOAD = registry_client("workload", {"type": "X509SanUri", "value": "spiffe://td.test/ns/x"})
PREFIX = registry_client("batch", {"type": "X509SanUri", "value": "spiffe://td.test/batch/*"})


@pytest.fixture(scope="module")
def td_test(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("td-test"), ca_name="td.test SPIFFE CA")


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://TD.TEST/ns/x",
        "spiffe://Td.test/ns/x",
        "spiffe://td.TEST/batch/job",
        "spiffe://TD.TEST/batch/job",
    ],
)
async def test_an_svid_with_an_uppercase_trust_domain_is_refused(
    make_gateway: MakeGateway, td_test: Pki, uri: str
) -> None:
    gw = await make_gateway(
        clients=[WORKLOAD, PREFIX], tls={"spiffe_bundles": {"td.test": str(td_test.ca.cert_path)}}
    )
    await assert_refused(gw, td_test.client("workload", uris=[uri]), 403, "access_denied")


async def test_the_lowercase_svid_is_accepted(make_gateway: MakeGateway, td_test: Pki) -> None:
    gw = await make_gateway(
        clients=[WORKLOAD, PREFIX], tls={"spiffe_bundles": {"td.test": str(td_test.ca.cert_path)}}
    )
    await assert_accepted_as(gw, td_test.client("w", uris=["spiffe://td.test/ns/x"]), "workload")
    await assert_accepted_as(gw, td_test.client("b", uris=["spiffe://td.test/batch/j"]), "batch")
