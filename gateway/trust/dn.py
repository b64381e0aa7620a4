"""Distinguished names: IdentityServer's string form, and a comparison key.

IdentityServer compares .NET's ``X500DistinguishedName.Name``: most specific RDN
first, ``", "`` between RDNs, ``" + "`` inside a multi-valued RDN, values in
double quotes (inner quotes doubled) when they contain one of ``, + = " \\n < > # ;``
or leading/trailing space.  Registries written for IdentityServer hold DNs in
that form, so we format certificate names the same way for headers and logs.

Strings are never compared, though: a CN of ``x, OU=production`` would then
equal a real ``OU=production`` RDN.  Both sides are parsed into a sequence of
RDNs, each a set of ``(oid, normalised value)`` pairs, and those are compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

# .NET's short names (X500DistinguishedName), in the order of the TLS notes.
_SHORT_NAMES: dict[str, str] = {
    NameOID.COMMON_NAME.dotted_string: "CN",
    NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string: "OU",
    NameOID.ORGANIZATION_NAME.dotted_string: "O",
    NameOID.LOCALITY_NAME.dotted_string: "L",
    NameOID.STATE_OR_PROVINCE_NAME.dotted_string: "S",
    NameOID.COUNTRY_NAME.dotted_string: "C",
    NameOID.EMAIL_ADDRESS.dotted_string: "E",
    NameOID.STREET_ADDRESS.dotted_string: "STREET",
    NameOID.TITLE.dotted_string: "T",
    NameOID.GIVEN_NAME.dotted_string: "G",
    NameOID.INITIALS.dotted_string: "I",
    NameOID.SURNAME.dotted_string: "SN",
    NameOID.SERIAL_NUMBER.dotted_string: "SERIALNUMBER",
    NameOID.DOMAIN_COMPONENT.dotted_string: "DC",
}

# Names accepted when parsing: .NET's, plus the RFC 4514 / OpenSSL spellings
# operators paste from `openssl x509 -subject`.
_OID_BY_NAME: dict[str, str] = {short: oid for oid, short in _SHORT_NAMES.items()} | {
    "ST": NameOID.STATE_OR_PROVINCE_NAME.dotted_string,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS.dotted_string,
    "GN": NameOID.GIVEN_NAME.dotted_string,
    "UID": NameOID.USER_ID.dotted_string,
}

_NEEDS_QUOTES = frozenset(',+="\n<>#;')
_NUMERIC_OID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")

# One attribute: (dotted OID, normalised value).  One RDN: a frozenset of them.
# A DN key: the RDNs in ASN.1 order (least specific first), as in the certificate.
Attribute = tuple[str, str]
Rdn = frozenset[Attribute]
DnKey = tuple[Rdn, ...]


class DnSyntaxError(ValueError):
    """A DN string that cannot be parsed; the message says where."""


def normalise_value(value: str) -> str:
    """Comparison form of an attribute value: case folded (``str.casefold``),
    inner runs of white space collapsed to one space, outer white space removed.

    Deliberately no Unicode normalisation (neither NFKC nor NFC): RFC 4518
    string preparation (NFKC) would make a CA-issued ``CN=client`` written in
    fullwidth letters (U+FF43 ...) equal the ASCII ``CN=client``.
    IdentityServer compares the .NET string exactly; case and white space are
    as far as we fold beyond it, so a value composed differently from the
    registry's (``e`` + U+0301 against ``é``) fails closed instead of
    matching.  Full case folding does map a few characters outside their
    script's usual letters (``ß`` → ``ss``, U+212A KELVIN SIGN → ``k``, the
    ``fi`` ligature → ``fi``): that is Unicode's CaseFolding.txt, documented in
    the README, not a compatibility mapping of whole alphabets.
    """
    return " ".join(value.casefold().split())


def _short_name(oid: ObjectIdentifier) -> str:
    dotted = oid.dotted_string
    return _SHORT_NAMES.get(dotted, f"OID.{dotted}")


def _format_value(value: str) -> str:
    if value == "" or value != value.strip() or any(ch in _NEEDS_QUOTES for ch in value):
        return '"' + value.replace('"', '""') + '"'
    return value


def _attribute_text(attribute: x509.NameAttribute[str | bytes]) -> str:
    value = attribute.value
    if isinstance(value, bytes):  # X.500 bit strings (x500UniqueIdentifier): show hex
        return "#" + value.hex()
    return value


def format_name(name: x509.Name) -> str:
    """IdentityServer (.NET) string form: ``CN=client, OU=production, O=company``."""
    parts = []
    for rdn in reversed(name.rdns):
        parts.append(
            " + ".join(
                f"{_short_name(attr.oid)}={_format_value(_attribute_text(attr))}" for attr in rdn
            )
        )
    return ", ".join(parts)


def name_key(name: x509.Name) -> DnKey:
    """Comparison key of a certificate name."""
    return tuple(
        frozenset((attr.oid.dotted_string, normalise_value(_attribute_text(attr))) for attr in rdn)
        for rdn in name.rdns
    )


@dataclass(frozen=True, slots=True)
class ParsedDn:
    """A DN parsed from text: its key, and a canonical string to show."""

    key: DnKey
    text: str
    # The shown text of each RDN, in the order written (most specific first).
    rdn_texts: tuple[str, ...] = field(default=(), compare=False)

    def reversed(self) -> ParsedDn:
        """The same RDNs in the opposite order."""
        texts = tuple(reversed(self.rdn_texts))
        return ParsedDn(key=tuple(reversed(self.key)), text=", ".join(texts), rdn_texts=texts)


# How specific an attribute is, for telling the two RDN orders apart: country
# and domain components name the widest thing, a CN the narrowest.
_SPECIFICITY: dict[str, int] = {
    NameOID.COUNTRY_NAME.dotted_string: 0,
    NameOID.DOMAIN_COMPONENT.dotted_string: 0,
    NameOID.STATE_OR_PROVINCE_NAME.dotted_string: 1,
    NameOID.LOCALITY_NAME.dotted_string: 1,
    NameOID.ORGANIZATION_NAME.dotted_string: 2,
    NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string: 3,
    NameOID.COMMON_NAME.dotted_string: 4,
    NameOID.USER_ID.dotted_string: 4,
}


def _specificity(rdn: Rdn) -> int | None:
    known = [_SPECIFICITY[oid] for oid, _ in rdn if oid in _SPECIFICITY]
    return max(known) if known else None


def looks_least_specific_first(parsed: ParsedDn) -> bool:
    """True for a DN written the way openssl prints subjects (``O=…, OU=…, CN=…``).

    Registries hold .NET's order, most specific first (``CN=…, OU=…, O=…``),
    and a DN in the other order matches no certificate of the usual shape.  A
    heuristic: the first RDN written is less specific than the last (a C or O
    first, a CN last).  A CA can issue names in unusual orders, so callers warn
    rather than refuse.
    """
    if len(parsed.key) < 2:
        return False
    first, last = _specificity(parsed.key[-1]), _specificity(parsed.key[0])
    return first is not None and last is not None and first < last


def parse_dn(text: str) -> ParsedDn:
    """Parse a DN written in IdentityServer's form (most specific RDN first).

    Accepted: ``,`` or ``;`` between RDNs (white space around them ignored),
    ``+`` inside a multi-valued RDN, values in double quotes with ``""`` for a
    quote, short names (CN, OU, O, …, also ST and emailAddress), ``OID.1.2.3``
    or a bare dotted OID.  A backslash is an ordinary character, as in .NET.
    """
    if not text.strip():
        raise DnSyntaxError("empty distinguished name")
    rdns = [_parse_rdn(chunk, text) for chunk in _split(text, ",;", text)]
    key = tuple(reversed([frozenset(attrs) for attrs, _ in rdns]))
    texts = tuple(" + ".join(parts) for _, parts in rdns)
    return ParsedDn(key=key, text=", ".join(texts), rdn_texts=texts)


def _split(text: str, separators: str, whole: str) -> list[str]:
    """Split on separators that are outside double-quoted values."""
    chunks: list[str] = []
    current: list[str] = []
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if in_quotes and i + 1 < len(text) and text[i + 1] == '"':
                current.append('""')
                i += 2
                continue
            in_quotes = not in_quotes
        if ch in separators and not in_quotes:
            chunks.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if in_quotes:
        raise DnSyntaxError(f"unterminated quoted value in {whole!r}")
    chunks.append("".join(current))
    if any(not c.strip() for c in chunks):
        raise DnSyntaxError(f"empty RDN or attribute in {whole!r}")
    return chunks


def _parse_rdn(chunk: str, whole: str) -> tuple[list[Attribute], list[str]]:
    attrs: list[Attribute] = []
    shown: list[str] = []
    for piece in _split(chunk, "+", whole):
        name, sep, raw_value = piece.partition("=")
        if not sep:
            raise DnSyntaxError(f"missing '=' in {piece.strip()!r} of {whole!r}")
        oid = _resolve_oid(name.strip(), whole)
        value = _unquote(raw_value.strip(), whole)
        attrs.append((oid, normalise_value(value)))
        shown.append(f"{_SHORT_NAMES.get(oid, 'OID.' + oid)}={_format_value(value)}")
    if len({oid for oid, _ in attrs}) != len(attrs) and len(attrs) > 1:
        # Legal in X.500 but almost certainly a typo; refusing avoids surprises.
        raise DnSyntaxError(f"attribute repeated inside one RDN in {whole!r}")
    return attrs, shown


def _resolve_oid(name: str, whole: str) -> str:
    if not name:
        raise DnSyntaxError(f"missing attribute name in {whole!r}")
    upper = name.upper()
    if upper in _OID_BY_NAME:
        return _OID_BY_NAME[upper]
    dotted = name[4:] if upper.startswith("OID.") else name
    # RFC 4512 numericoid: ASCII digits without leading zeros.  str.isdigit()
    # alone also takes "٣" or "²", and "2.5.4.03" would be a key that silently
    # never equals a certificate's 2.5.4.3.
    if _NUMERIC_OID.fullmatch(dotted):
        return dotted
    raise DnSyntaxError(f"unknown attribute type {name!r} in {whole!r}")


def _unquote(value: str, whole: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        inner = value[1:-1]
        if '"' in inner.replace('""', ""):
            raise DnSyntaxError(f"stray quote in value {value!r} of {whole!r}")
        return inner.replace('""', '"')
    if '"' in value:
        raise DnSyntaxError(f"stray quote in value {value!r} of {whole!r}")
    return value
