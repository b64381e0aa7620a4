"""gateway.trust.dn: .NET's X500DistinguishedName.Name form, parsing, and comparison keys.

The expected strings are written out by hand from the rules in
docs/design/names-and-thumbprints.md ("Distinguished names"), never derived
from the formatter under test.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.trust.dn import (
    DnSyntaxError,
    format_name,
    looks_least_specific_first,
    name_key,
    normalise_value,
    parse_dn,
)
from tests.conftest import MakeGateway
from tests.pki import Issued, Pki, dn, name
from tests.test_auth import MTLS_CLIENT, assert_accepted_as, assert_refused

CUSTOM_OID = ObjectIdentifier("1.3.6.1.4.1.99999.7")

# --------------------------------------------------------------------------- format_name


def test_most_specific_rdn_first_with_comma_space() -> None:
    # ASN.1 order is O, OU, CN; .NET shows it reversed.
    assert format_name(dn("client")) == "CN=client, OU=production, O=company"


def test_single_rdn() -> None:
    assert format_name(name((NameOID.COMMON_NAME, "solo"))) == "CN=solo"


def test_multi_valued_rdn_joined_with_plus() -> None:
    subject = name(
        (NameOID.ORGANIZATION_NAME, "company"),
        [(NameOID.COMMON_NAME, "client"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "production")],
    )
    assert format_name(subject) == "CN=client + OU=production, O=company"


@pytest.mark.parametrize(
    ("oid", "value", "expected"),
    [
        (NameOID.COMMON_NAME, "x", "CN=x"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "x", "OU=x"),
        (NameOID.ORGANIZATION_NAME, "x", "O=x"),
        (NameOID.LOCALITY_NAME, "x", "L=x"),
        (NameOID.STATE_OR_PROVINCE_NAME, "x", "S=x"),
        (NameOID.COUNTRY_NAME, "NL", "C=NL"),
        (NameOID.EMAIL_ADDRESS, "a@example.com", "E=a@example.com"),
        (NameOID.STREET_ADDRESS, "x", "STREET=x"),
        (NameOID.TITLE, "x", "T=x"),
        (NameOID.GIVEN_NAME, "x", "G=x"),
        (NameOID.INITIALS, "x", "I=x"),
        (NameOID.SURNAME, "x", "SN=x"),
        (NameOID.SERIAL_NUMBER, "x", "SERIALNUMBER=x"),
        (NameOID.DOMAIN_COMPONENT, "x", "DC=x"),
        # No .NET short name: OID.<dotted>.
        (NameOID.USER_ID, "x", "OID.0.9.2342.19200300.100.1.1"),
        (NameOID.BUSINESS_CATEGORY, "x", "OID.2.5.4.15"),
        (CUSTOM_OID, "x", "OID.1.3.6.1.4.1.99999.7"),
    ],
    ids=lambda v: v.dotted_string if isinstance(v, ObjectIdentifier) else None,
)
def test_short_names_and_oid_fallback(oid: ObjectIdentifier, value: str, expected: str) -> None:
    if "=" not in expected:
        expected = f"{expected}={value}"
    assert format_name(name((oid, value))) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("inner space", "inner space"),
        ("back\\slash", "back\\slash"),  # not special in .NET
        ("a,b", '"a,b"'),
        ("a+b", '"a+b"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say ""hi"""'),
        ("two\nlines", '"two\nlines"'),
        ("a<b", '"a<b"'),
        ("a>b", '"a>b"'),
        ("#1", '"#1"'),
        ("a;b", '"a;b"'),
        (" leading", '" leading"'),
        ("trailing ", '"trailing "'),
        ('"', '""""'),
    ],
)
def test_quoting(value: str, expected: str) -> None:
    assert format_name(name((NameOID.COMMON_NAME, value))) == f"CN={expected}"


@pytest.mark.parametrize(
    "value",
    ["Jürgen Müller", "客户端", "Ελληνικά", "emoji 🔐 key", "Ǆemal"],
)
def test_unicode_values_are_shown_as_is(value: str) -> None:
    assert format_name(name((NameOID.COMMON_NAME, value))) == f"CN={value}"


def test_unicode_value_with_special_character_is_quoted() -> None:
    subject = name((NameOID.ORGANIZATION_NAME, "Société, SA"), (NameOID.COMMON_NAME, "ünï"))
    assert format_name(subject) == 'CN=ünï, O="Société, SA"'


# --------------------------------------------------------------------------- parse_dn


@pytest.mark.parametrize(
    "text",
    [
        "CN=client, OU=production, O=company",
        "CN=client,OU=production,O=company",  # RFC 4514 style, no spaces
        "CN=client; OU=production; O=company",
        "CN=client;OU=production ,  O=company",
        "  CN = client , OU = production , O = company  ",
        "cn=client, ou=production, o=company",
        'CN="client", OU="production", O=company',
        "OID.2.5.4.3=client, OID.2.5.4.11=production, OID.2.5.4.10=company",
        "2.5.4.3=client, 2.5.4.11=production, 2.5.4.10=company",
    ],
)
def test_parse_forms_of_the_same_name(text: str) -> None:
    assert parse_dn(text).key == name_key(dn("client"))


def test_parse_gives_canonical_text() -> None:
    assert parse_dn("cn=client;ou=production;o=company").text == (
        "CN=client, OU=production, O=company"
    )


def test_parse_rfc4514_string_from_cryptography() -> None:
    subject = name(
        (NameOID.DOMAIN_COMPONENT, "org"),
        (NameOID.STATE_OR_PROVINCE_NAME, "Noord-Holland"),
        (NameOID.EMAIL_ADDRESS, "ops@example.org"),
        (NameOID.USER_ID, "u123"),
        (NameOID.COMMON_NAME, "client"),
    )
    text = subject.rfc4514_string()  # ST=, UID=, dotted OID for the e-mail attribute
    assert "ST=" in text and "1.2.840.113549.1.9.1=" in text
    assert parse_dn(text).key == name_key(subject)


def test_aliases_st_and_email_address() -> None:
    subject = name(
        (NameOID.STATE_OR_PROVINCE_NAME, "Utrecht"), (NameOID.EMAIL_ADDRESS, "a@example.org")
    )
    expected = name_key(subject)
    assert parse_dn("E=a@example.org, S=Utrecht").key == expected
    assert parse_dn("emailAddress=a@example.org, ST=Utrecht").key == expected
    assert parse_dn("EMAILADDRESS=a@example.org, st=Utrecht").key == expected


def test_unknown_dotted_oid() -> None:
    key = parse_dn("OID.1.3.6.1.4.1.99999.7=x, 1.3.6.1.4.1.99999.8=y").key
    assert key == (
        frozenset({("1.3.6.1.4.1.99999.8", "y")}),
        frozenset({("1.3.6.1.4.1.99999.7", "x")}),
    )
    assert name_key(name((CUSTOM_OID, "x"))) == parse_dn("OID.1.3.6.1.4.1.99999.7=x").key


def test_parse_multi_valued_rdn_in_any_order() -> None:
    subject = name(
        (NameOID.ORGANIZATION_NAME, "company"),
        [(NameOID.COMMON_NAME, "client"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "production")],
    )
    assert parse_dn("CN=client + OU=production, O=company").key == name_key(subject)
    assert parse_dn("OU=production+CN=client,O=company").key == name_key(subject)
    # The same attributes as separate RDNs are a different name.
    assert parse_dn("CN=client, OU=production, O=company").key != name_key(subject)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('CN="a,b"', "a,b"),
        ('CN="a+b"', "a+b"),
        ('CN="a;b"', "a;b"),
        ('CN="say ""hi"""', 'say "hi"'),
        ('CN=""""', '"'),
        ('CN="two\nlines"', "two\nlines"),
        ("CN=back\\slash", "back\\slash"),
        ("CN=a=b", "a=b"),  # lenient: an unquoted '=' in a value is kept
    ],
)
def test_parse_quoted_values(text: str, value: str) -> None:
    assert parse_dn(text).key == name_key(name((NameOID.COMMON_NAME, value)))


def test_the_injection_case() -> None:
    injected = parse_dn('CN="client, OU=production", O=company')
    real = parse_dn("CN=client, OU=production, O=company")
    assert injected.key != real.key
    assert len(injected.key) == 2 and len(real.key) == 3
    # ... and the same holds for the certificate a caller would present.
    cert_name = name(
        (NameOID.ORGANIZATION_NAME, "company"), (NameOID.COMMON_NAME, "client, OU=production")
    )
    assert name_key(cert_name) == injected.key
    assert name_key(cert_name) != real.key
    assert format_name(cert_name) == 'CN="client, OU=production", O=company'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('CN="client, O=company', "unterminated"),
        ('CN="a""', "unterminated"),
        ("CN", "missing '='"),
        ("CN=client, production", "missing '='"),
        ("=client", "missing attribute name"),
        ("FOO=bar", "unknown attribute type"),
        ("OID.=x", "unknown attribute type"),
        ("OID.1=x", "unknown attribute type"),
        ("1.2.x=y", "unknown attribute type"),
        ("OID.1.2.=y", "unknown attribute type"),
        ("1..2=y", "unknown attribute type"),
        ("OID.٣.٤=x", "unknown attribute type"),  # non-ASCII digits
        ("OID.2.5.4.03=x", "unknown attribute type"),  # leading zero: not 2.5.4.3
        ("CN=a,,O=b", "empty RDN"),
        ("CN=a, ;O=b", "empty RDN"),
        ("CN=a,", "empty RDN"),
        (",CN=a", "empty RDN"),
        ("CN=a + , O=b", "empty RDN"),
        ('CN=a"b', "unterminated"),
        ('CN="a" "b"', "stray quote"),
        ('CN=x"a,b"', "stray quote"),
        ("CN=a + CN=b", "repeated"),
    ],
)
def test_syntax_errors(text: str, fragment: str) -> None:
    with pytest.raises(DnSyntaxError, match=fragment):
        parse_dn(text)


def test_syntax_error_is_a_value_error() -> None:
    # Callers (registry model, config) catch ValueError for every malformed value.
    assert issubclass(DnSyntaxError, ValueError)


# --------------------------------------------------------------------------- comparison


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Client", "client"),
        ("  client  ", "client"),
        ("my   client", "my client"),
        ("my\tclient", "my client"),
        ("STRASSE", "straße"),  # case folding, not just lower()
        ("ﬁle", "file"),  # CaseFolding.txt maps the ligature (documented in README)
        ("my\u00a0client", "my client"),  # any Unicode white space collapses
        ("\uff23\uff2c\uff29\uff25\uff2e\uff34", "\uff43\uff4c\uff49\uff45\uff4e\uff54"),
    ],
)
def test_normalise_value_equal(a: str, b: str) -> None:
    assert normalise_value(a) == normalise_value(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("client", "client2"),
        ("a b", "ab"),
        ("é", "e"),
        # No NFKC: fullwidth lookalikes stay distinct from ASCII (issue 13).
        ("\uff43\uff4c\uff49\uff45\uff4e\uff54", "client"),
        ("\uff23\uff2c\uff29\uff25\uff2e\uff34", "client"),
        ("\u2460", "1"),  # circled digit one
        # No NFC either: a differently composed value fails closed.
        ("e\u0301", "\u00e9"),
    ],
)
def test_normalise_value_different(a: str, b: str) -> None:
    assert normalise_value(a) != normalise_value(b)


def test_comparison_ignores_case_and_white_space_but_not_structure() -> None:
    cert = name_key(dn("Client"))
    assert parse_dn("cn=CLIENT,  ou = Production ;o=COMPANY").key == cert
    assert parse_dn("CN=client, O=company").key != cert
    assert parse_dn("O=company, OU=production, CN=client").key != cert  # order matters
    assert parse_dn("CN=client, OU=production, O=company, DC=extra").key != cert


# --------------------------------------------------------------------------- properties

# Attribute types a random name draws from: short names, aliases' targets, and
# OIDs without a .NET short name.  C is left out: its value must be two letters.
_OIDS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.EMAIL_ADDRESS,
    NameOID.STREET_ADDRESS,
    NameOID.TITLE,
    NameOID.GIVEN_NAME,
    NameOID.INITIALS,
    NameOID.SURNAME,
    NameOID.SERIAL_NUMBER,
    NameOID.DOMAIN_COMPONENT,
    NameOID.USER_ID,
    CUSTOM_OID,
]

# Printable text plus every character the quoting rules care about; no control
# characters except "\n".
_values = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(",+=\"\n<>#;\\ '")),
        st.characters(exclude_categories=("Cs", "Cc")),
    ),
    min_size=1,
    max_size=40,
    # cryptography refuses a CN longer than 64 UTF-8 bytes (X.520 ub-common-name
    # is 64 characters; it counts bytes): such names cannot exist here.
).filter(lambda value: len(value.encode("utf-8")) <= 64)


@st.composite
def _rdns(draw: st.DrawFn) -> x509.RelativeDistinguishedName:
    # Distinct types inside one RDN: parse_dn refuses a repeated type on purpose
    # (see test_syntax_errors "repeated").
    oids = draw(st.lists(st.sampled_from(_OIDS), min_size=1, max_size=3, unique=True))
    return x509.RelativeDistinguishedName([x509.NameAttribute(o, draw(_values)) for o in oids])


_names = st.lists(_rdns(), min_size=1, max_size=5).map(x509.Name)


@given(_names)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_format_then_parse_gives_the_name_key(subject: x509.Name) -> None:
    text = format_name(subject)
    parsed = parse_dn(text)
    assert parsed.key == name_key(subject)
    assert parsed.text == text  # the .NET form is already canonical


_dnish = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('CNOUSTE=,;+" \n.0123456789ID')),
        st.characters(exclude_categories=["Cs"]),
    ),
    max_size=60,
)


@given(st.one_of(st.text(max_size=80), _dnish))
@example('CN=""')
@example('CN="""')
@example("OID.٣.٤=x")
@example("CN=a+")
@settings(max_examples=500)
def test_parse_arbitrary_text_raises_only_dn_syntax_error(text: str) -> None:
    try:
        parsed = parse_dn(text)
    except DnSyntaxError:
        return
    # Whatever parses has a canonical text that parses to the same key.
    assert parse_dn(parsed.text).key == parsed.key


# --------------------------------------------------------------------------- over real TLS


async def test_fullwidth_lookalike_cn_is_refused_over_tls(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued
) -> None:
    """A CA-issued fullwidth ``CN=client`` must not be served as the ASCII ``CN=client``."""
    lookalike = pki.client("\uff43\uff4c\uff49\uff45\uff4e\uff54")  # "client", fullwidth
    gw = await make_gateway(clients=[MTLS_CLIENT])
    await assert_refused(gw, lookalike, 403, "access_denied")
    await assert_accepted_as(gw, client_cert, "mtls.client")  # the real one still is


# --------------------------------------------------------------------------- RDN order


@pytest.mark.parametrize(
    ("text", "reversed_text"),
    [
        ("O=company, OU=production, CN=client", "CN=client, OU=production, O=company"),
        ("C=FR, O=company, CN=client", "CN=client, O=company, C=FR"),
        ("DC=org, DC=example, CN=host", "CN=host, DC=example, DC=org"),
        ("O=company, OU=production", "OU=production, O=company"),
        ("C=FR, O=x + CN=y", "O=x + CN=y, C=FR"),
    ],
)
def test_openssl_order_is_recognised(text: str, reversed_text: str) -> None:
    parsed = parse_dn(text)
    assert looks_least_specific_first(parsed)
    flipped = parsed.reversed()
    assert flipped.text == reversed_text
    assert flipped.key == parse_dn(reversed_text).key
    assert not looks_least_specific_first(flipped)


@pytest.mark.parametrize(
    "text",
    [
        "CN=client, OU=production, O=company",
        "CN=client",
        "E=ops@example.org, CN=client",  # equally specific: no opinion
        "OID.1.2.3.4=x, CN=client",  # an unknown type first: no opinion
        "OU=production, O=company",
    ],
)
def test_registry_order_is_not_flagged(text: str) -> None:
    assert not looks_least_specific_first(parse_dn(text))
