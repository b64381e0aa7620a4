"""Forwarded-certificate headers: the caller never chooses the certificate.

Envoy in ``APPEND_FORWARD`` mode copies the caller's ``X-Forwarded-Client-Cert``
and appends its own element, so everything left of the last element is the
caller's text.  The attack: a prefix with an unbalanced quote, then an
appended element for a certificate whose subject holds a ``"`` (written
``\\"``): a reader that only counts quotes sees one element whose first
``Cert=`` is the caller's choice (a victim's public certificate).

Real sockets here (the test client is the trusted Envoy, from 127.0.0.1);
the property tests drive the parser with any prefix and any subject.
"""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import quote

import aiohttp
import pytest
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.trust.forwarded import ForwardedCertError, parse_forwarded
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    echoed_headers,
    name_secret,
    registry_client,
)
from tests.pki import Issued, Pki, name
from tests.test_proxy import RawConnection

VICTIM = registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))
ENVOY = {"forwarded_client_cert": {"trusted_proxies": ["127.0.0.1/32"], "format": "envoy_xfcc"}}


def envoy_value(text: str) -> str:
    """Envoy's XFCC quoting: always quoted here, ``\\`` and ``"`` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def envoy_element(cert: Issued) -> str:
    """The element Envoy appends (set_current_client_cert_details: cert, subject)."""
    subject = cert.cert.subject.rfc4514_string()
    return (
        f"Hash={hashlib.sha256(cert.der).hexdigest()};"
        f'Cert="{quote(cert.pem.decode())}";'
        f"Subject={envoy_value(subject)}"
    )


async def send(gw: GatewayUnderTest, xfcc: str) -> tuple[int, dict[str, object]]:
    connector = aiohttp.TCPConnector(ssl=gw.ssl_context(None), local_addr=("127.0.0.1", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(gw.url + "/", headers={"X-Forwarded-Client-Cert": xfcc}) as r,
    ):
        return r.status, await r.json()


async def test_an_unbalanced_quote_in_the_callers_prefix_does_not_choose_the_certificate(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The finding: 200 with X-Client-Id: mtls.client for the victim's certificate."""
    attacker = pki.certificate(name((NameOID.COMMON_NAME, 'attacker "quoted"')))
    gw = await make_gateway(clients=[VICTIM], listener=ENVOY)
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    prefix = f'Cert="{quote(client_cert.pem.decode())}";By="x'
    status, body = await send(gw, f"{prefix},{envoy_element(attacker)}")
    assert (status, body["error"]) == (400, "invalid_request"), body
    refused = [r for r in caplog.records if getattr(r, "event", "") == "auth_refused"]
    assert refused and "X-Forwarded-Client-Cert" in refused[-1].reason  # type: ignore[attr-defined]


async def test_well_formed_append_forward_takes_the_element_the_proxy_appended(
    make_gateway: MakeGateway, client_cert: Issued, pki: Pki
) -> None:
    """Earlier (caller-sent) elements naming the victim are never read."""
    attacker = pki.client("attacker")
    gw = await make_gateway(
        clients=[
            VICTIM,
            registry_client("attacker", name_secret("CN=attacker, OU=production, O=company")),
        ],
        listener=ENVOY,
    )
    forged = f'Cert="{quote(client_cert.pem.decode())}";Subject="CN=client"'
    status, body = await send(gw, f"{forged},{envoy_element(attacker)}")
    assert status == 200, body
    assert echoed_headers(body)["x-client-id"] == ["attacker"]
    # The victim's own appended element still works.
    status, body = await send(gw, f"{forged},{envoy_element(client_cert)}")
    assert status == 200, body
    assert echoed_headers(body)["x-client-id"] == ["mtls.client"]


@pytest.mark.parametrize(
    "xfcc",
    [
        'Cert="a"b;Subject=x',  # text after a closing quote
        'Cert=a"b"',  # a quote inside a token
        "Cert",  # no "="
        'Cert="x";Cert="y"',  # the same key twice: which one?
        'Subject="CN=x\\',  # an escape at the very end
        'Cert=x;By="open',  # unterminated
    ],
)
async def test_xfcc_that_does_not_parse_unambiguously_is_400(
    make_gateway: MakeGateway, xfcc: str
) -> None:
    gw = await make_gateway(clients=[VICTIM], listener=ENVOY)
    status, body = await send(gw, xfcc)
    assert (status, body["error"]) == (400, "invalid_request"), body


# --- the parser, for any caller prefix and any subject (hypothesis) ------------------------

_PREFIX_FRAGMENTS = st.sampled_from(
    [
        '"',
        "\\",
        '\\"',
        ",",
        ";",
        "=",
        '="',
        " ",
        "Cert=<victim>",
        "By=",
        "Subject=",
        "Hash=",
        "URI=",
        "x",
    ]
)


@pytest.fixture(scope="module")
def two_certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued]:
    pki = Pki(tmp_path_factory.mktemp("xfcc-pki"))
    return pki.client("victim"), pki.client("proxy-element")


@settings(max_examples=500, deadline=None)
@given(
    prefix=st.lists(_PREFIX_FRAGMENTS, max_size=12).map("".join),
    subject=st.text(alphabet=st.sampled_from('ab "\\,;=+<>#'), max_size=16),
)
def test_any_prefix_and_any_subject_yield_the_appended_element_or_a_refusal(
    two_certificates: tuple[Issued, Issued], prefix: str, subject: str
) -> None:
    victim, proxied = two_certificates
    victim_cert = f'"{quote(victim.pem.decode())}"'
    element = (
        f"Hash={hashlib.sha256(proxied.der).hexdigest()};"
        f'Cert="{quote(proxied.pem.decode())}";Subject={envoy_value("CN=" + subject)}'
    )
    raw = f"{prefix.replace('<victim>', victim_cert)},{element}"
    try:
        parsed = parse_forwarded("envoy_xfcc", raw)
    except ForwardedCertError:
        return
    assert parsed is not None and parsed.leaf == proxied.der


@settings(max_examples=300, deadline=None)
@given(subject=st.text(alphabet=st.sampled_from('ab "\\,;=+'), max_size=16))
def test_the_appended_element_alone_always_parses(
    two_certificates: tuple[Issued, Issued], subject: str
) -> None:
    """No false refusals: what Envoy writes, for any subject, is read."""
    _, proxied = two_certificates
    element = f'Cert="{quote(proxied.pem.decode())}";Subject={envoy_value("CN=" + subject)}'
    parsed = parse_forwarded("envoy_xfcc", element)
    assert parsed is not None and parsed.leaf == proxied.der


# --- NGINX's deprecated $ssl_client_cert ---------------------------------------------------

NGINX = {"forwarded_client_cert": {"trusted_proxies": ["127.0.0.1/32"], "format": "nginx"}}


@pytest.mark.parametrize("name", ["X-SSL-Client-Cert", "ssl-client-cert"])
async def test_nginx_folded_ssl_client_cert_is_a_400_naming_the_escaped_variable(
    make_gateway: MakeGateway, client_cert: Issued, name: str
) -> None:
    """The bytes NGINX sends for ``$ssl_client_cert``: the PEM, each LF followed by a TAB.

    Refused by the HTTP parser (folded lines, bare LFs) from the trusted proxy
    too, with an answer that says which variable works; nothing is relayed.
    """
    gw = await make_gateway(clients=[VICTIM], listener=NGINX)
    folded = client_cert.pem.decode().strip().replace("\n", "\n\t")
    conn = await RawConnection.open(gw, None)
    try:
        response = await conn.request(
            f"GET / HTTP/1.1\r\nHost: localhost\r\n{name}: {folded}\r\n\r\n"
        )
    finally:
        await conn.close()
    assert response.status == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert "$ssl_client_escaped_cert" in body["error_description"]
