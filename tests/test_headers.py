"""Header functions: what upstream can trust depends on every one of these."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import pytest
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import (
    downstream_response_fields,
    header_key,
    identity_headers,
    managed_header_keys,
    upstream_request_fields,
    upstream_request_headers,
    xfcc_element,
)
from gateway.proxy.config import HeaderNames
from gateway.trust.identity import CertificateIdentity, identity_from_der
from tests.pki import Issued, Pki, name

MANAGED = managed_header_keys(HeaderNames())


def incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def identity_of(issued: Issued) -> CertificateIdentity:
    return identity_from_der(issued.der)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("X-Client-Id", "x-client-id"),
        ("x-client-id", "x-client-id"),
        ("X_Client_Id", "x-client-id"),
        ("X-CLIENT-ID", "x-client-id"),
        ("x_client-ID", "x-client-id"),
        ("Content-Type", "content-type"),
    ],
)
def test_header_key_folds_case_and_underscore(raw: str, key: str) -> None:
    assert header_key(raw) == key


def test_managed_keys_cover_spec_headers_and_forwarding_headers() -> None:
    for name_ in (
        "x-client-id",
        "x-client-cert-subject",
        "x-client-cert-thumbprint",
        "x-client-cert-sha256",
        "x-forwarded-client-cert",
        "client-cert",  # managed even while disabled: an upstream may still trust it
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ):
        assert name_ in MANAGED


def test_managed_keys_include_renamed_headers_in_key_form() -> None:
    names = HeaderNames(client_id="X_Caller_ID", subject="X-Caller-DN", client_cert="X-Cert")
    managed = managed_header_keys(names)
    assert {"x-caller-id", "x-caller-dn", "x-cert"} <= managed
    # The defaults stay managed after a rename: an upstream configured for them
    # must never receive a caller-made copy.
    assert "x-client-id" in managed


SPOOFED = (
    ("X-Client-Id", "admin"),
    ("x-client-id", "admin"),
    ("X_Client_Id", "admin"),
    ("X-CLIENT-ID", "admin"),
    ("X-Client-Cert-Subject", "CN=admin"),
    ("X-Client-Cert-Thumbprint", "00" * 20),
    ("X-Client-Cert-Sha256", "AAAA"),
    ("X-Forwarded-Client-Cert", "Hash=00"),
    ("Client-Cert", ":AAAA:"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "evil.example"),
    ("Forwarded", "for=10.0.0.1"),
)


def test_upstream_headers_one_pass_drops_managed_hop_by_hop_and_connection_listed() -> None:
    headers = upstream_request_headers(
        incoming(
            ("Host", "gateway.example"),
            ("Accept", "application/json"),
            ("Connection", "keep-alive, X-Hop, x_other_hop"),
            ("X-Hop", "1"),
            ("X-Other-Hop", "2"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "yes"),
            *SPOOFED,
        ),
        managed=MANAGED,
        injected=(("X-Client-Id", "mtls.client"),),
        host="upstream:8080",
        keep=(("X-Forwarded-For", "127.0.0.1"),),
    )
    keys = [header_key(k) for k, _ in headers.items()]
    assert sorted(keys) == sorted(["accept", "x-kept", "host", "x-forwarded-for", "x-client-id"])
    assert headers["Host"] == "upstream:8080"
    assert headers.getall("X-Client-Id") == ["mtls.client"]
    assert headers.getall("X-Forwarded-For") == ["127.0.0.1"]


def test_upstream_headers_connection_listing_a_managed_name_does_not_drop_the_injected_one() -> (
    None
):
    headers = upstream_request_headers(
        incoming(("Connection", "X-Client-Id"), ("X-Client-Id", "admin")),
        managed=MANAGED,
        injected=(("X-Client-Id", "mtls.client"),),
        host="u",
    )
    assert headers.getall("X-Client-Id") == ["mtls.client"]
    assert "Connection" not in headers


def test_upstream_headers_keep_content_length_unless_chunked() -> None:
    plain = upstream_request_headers(
        incoming(("Content-Length", "12")), managed=MANAGED, injected=(), host="u"
    )
    assert plain.getall("Content-Length") == ["12"]
    chunked = upstream_request_headers(
        incoming(("Content-Length", "12"), ("Transfer-Encoding", "chunked")),
        managed=MANAGED,
        injected=(),
        host="u",
    )
    # A request with both is framed by Transfer-Encoding (RFC 9112 §6.3); the
    # upstream hop re-frames the stream itself, so neither is copied.
    assert "Content-Length" not in chunked
    assert "Transfer-Encoding" not in chunked


def test_upstream_headers_keep_repeated_end_to_end_fields() -> None:
    headers = upstream_request_headers(
        incoming(("Accept", "a"), ("Accept", "b"), ("Cookie", "x=1"), ("Cookie", "y=2")),
        managed=MANAGED,
        injected=(),
        host="u",
    )
    assert headers.getall("Accept") == ["a", "b"]
    assert headers.getall("Cookie") == ["x=1", "y=2"]


def raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    """Fields as gateway/upstream/ hands them over: bytes, in the upstream's order."""
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_downstream_response_fields_drop_hop_by_hop() -> None:
    fields, length, transfer_encoding = downstream_response_fields(
        raw(
            ("Content-Type", "text/plain"),
            ("Connection", "close, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        )
    )
    assert fields == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert (length, transfer_encoding) == (None, True)


def test_downstream_response_fields_drop_connection_listed_names_in_any_spelling() -> None:
    # The Connection tokens are read in key form; the field names must be too,
    # or a listed "X_Hop" crosses the gateway (RFC 9110 §7.6.1).
    fields, _, _ = downstream_response_fields(
        raw(("Connection", "X_Hop, x-other"), ("X_Hop", "1"), ("X_Other", "2"), ("A", "b"))
    )
    assert fields == [("A", "b")]


def test_downstream_response_fields_after_connection_keep_alive_keep_end_to_end_fields() -> None:
    # What NGINX and most upstreams send: the listed name is hop-by-hop
    # already, so nothing else goes (the short path), and a second
    # Connection field that lists a name still takes it away.
    fields, length, _ = downstream_response_fields(
        raw(
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Length", "2"),
            ("X-Kept", "1"),
        )
    )
    assert fields == [("X-Kept", "1")]
    assert length == b"2"
    fields, _, _ = downstream_response_fields(
        raw(("Connection", "keep-alive"), ("Connection", "X-Hop"), ("X-Hop", "1"), ("A", "b"))
    )
    assert fields == [("A", "b")]


def test_downstream_response_fields_name_the_framing() -> None:
    fields, length, transfer_encoding = downstream_response_fields(
        raw(("Content-Length", "12"), ("Content-Length", "13"), ("ETag", '"x"'))
    )
    assert fields == [("ETag", '"x"')]
    assert (length, transfer_encoding) == (
        b"12",
        False,
    )  # the first value; llhttp refuses a mismatch


def test_xfcc_element_quotes_subject_and_lists_sans(pki: Pki) -> None:
    issued = pki.client(
        "xfcc", dns=["svc.example.org"], uris=["spiffe://example.org/ns/prod/sa/xfcc"]
    )
    ident = identity_of(issued)
    element = xfcc_element(ident)
    # Envoy's shape: the RFC 4514 subject is quoted because it holds ',' and '='.
    assert element == (
        f"Hash={ident.sha256_hex};"
        'Subject="CN=xfcc,OU=production,O=company";'
        "URI=spiffe://example.org/ns/prod/sa/xfcc;"
        "DNS=svc.example.org"
    )


def _xfcc_unquote(value: str) -> str:
    """Read one XFCC value the way a quoted-string parser does (RFC 9110 §5.6.4)."""
    assert value.startswith('"') and value.endswith('"'), value
    out, escaped = [], False
    for ch in value[1:-1]:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        else:
            assert ch != '"', f"unescaped quote ends the value early: {value}"
            out.append(ch)
    assert not escaped
    return "".join(out)


def test_xfcc_element_escapes_quotes_and_backslashes(pki: Pki) -> None:
    issued = pki.certificate(name((NameOID.COMMON_NAME, 'say "hi"; \\ok, URI=x')))
    ident = identity_of(issued)
    element = xfcc_element(ident)
    head, _, subject = element.partition(";Subject=")
    assert head == f"Hash={ident.sha256_hex}"
    # The whole subject is one quoted-string: its ';' and ',' can't start a new
    # key or element, and a parser gets the exact RFC 4514 string back.
    assert _xfcc_unquote(subject) == ident.subject_rfc4514


def test_identity_headers_percent_encode_newline_and_non_ascii(pki: Pki) -> None:
    issued = pki.certificate(
        name(
            (NameOID.ORGANIZATION_NAME, "Société Générale"),
            (NameOID.COMMON_NAME, "evil\r\nX-Client-Id: admin"),
        )
    )
    ident = identity_of(issued)
    headers = dict(identity_headers(HeaderNames(), "mtls.client", ident))
    for value in headers.values():
        # Every value must travel as one header line of visible ASCII.
        assert value.isascii()
        assert "\r" not in value and "\n" not in value
    subject = headers["X-Client-Cert-Subject"]
    assert "%0D%0A" in subject
    assert "Soci%C3%A9t%C3%A9" in subject
    # Reversible: the upstream can recover the exact DN string.
    assert unquote(subject) == ident.subject
    assert "%0D%0A" in headers["X-Forwarded-Client-Cert"]


def test_identity_headers_percent_encode_a_literal_percent(pki: Pki) -> None:
    issued = pki.certificate(name((NameOID.COMMON_NAME, "100%25 real")))
    headers = dict(identity_headers(HeaderNames(), "c", identity_of(issued)))
    # Without escaping '%' itself, "%25" could not be told from an encoded "%".
    assert unquote(headers["X-Client-Cert-Subject"]) == "CN=100%25 real"


def test_identity_headers_values_and_names(pki: Pki, client_cert: Issued) -> None:
    ident = identity_of(client_cert)
    names = HeaderNames(client_cert="Client-Cert")
    headers = dict(identity_headers(names, "mtls.client", ident))
    assert headers == {
        "X-Client-Id": "mtls.client",
        "X-Client-Cert-Subject": "CN=client, OU=production, O=company",
        "X-Client-Cert-Thumbprint": client_cert.thumbprint,
        "X-Client-Cert-Sha256": ident.x5t_s256,
        "X-Forwarded-Client-Cert": xfcc_element(ident),
        "Client-Cert": f":{base64.b64encode(client_cert.der).decode()}:",
    }


def test_identity_headers_without_a_client_carry_no_client_id(client_cert: Issued) -> None:
    headers = dict(identity_headers(HeaderNames(), None, identity_of(client_cert)))
    assert "X-Client-Id" not in headers
    assert headers["X-Client-Cert-Thumbprint"] == client_cert.thumbprint


def test_identity_headers_disabled_names_are_left_out(client_cert: Issued) -> None:
    names = HeaderNames(subject=None, xfcc=None)
    headers = dict(identity_headers(names, "c", identity_of(client_cert)))
    assert set(headers) == {"X-Client-Id", "X-Client-Cert-Thumbprint", "X-Client-Cert-Sha256"}


def test_the_key_cache_is_bounded_and_keys_stay_exact() -> None:
    # Callers choose the names: past the bound keys are computed, not stored.
    from gateway import headers

    for i in range(headers._KEYS_BOUND + 50):
        assert headers._cached_key(f"X_Name-{i}") == f"x-name-{i}"
    assert len(headers._KEYS) <= headers._KEYS_BOUND
    fields = upstream_request_fields(
        CIMultiDict([("X_Managed", "forged"), ("Accept", "*/*")]),
        managed=frozenset({"x-managed"}),
        injected=(),
        host="up",
    )
    assert fields == [("Accept", "*/*"), ("Host", "up")]
