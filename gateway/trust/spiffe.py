"""SPIFFE IDs: parsing, registry patterns, and the X.509-SVID leaf rules.  Pure.

A registry ``X509SanUri`` secret whose value starts with ``spiffe://`` names a
SPIFFE ID (SPIFFE-ID §2) or, ending in ``/*``, every ID below a path:
``spiffe://example.org/ns/prod/*`` matches ``spiffe://example.org/ns/prod/sa/api``
and ``.../ns/prod/a/b``, but not ``spiffe://example.org/ns/prod`` itself (a
pattern names a namespace's members, not the namespace) and never
``.../ns/production``: matching is by whole path segments.

Case: SPIFFE-ID §2.1 allows only lowercase in a trust domain.  A certificate's
ID (``parse_spiffe_id``) in another case is not a SPIFFE ID and is refused:
folding ``spiffe://TD.TEST/x`` into ``td.test`` would grant an identity that
every spec-following peer reads as a different one.  A registry value or a
config key (``parse_spiffe_pattern``, ``trust_domain_key``) is the operator's
text and is lowercased, so a capital typed there cannot lock a client out.
The path is compared exactly, as the specification says.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048  # SPIFFE-ID §2.3
MAX_TRUST_DOMAIN_LENGTH = 255  # SPIFFE-ID §2.1
_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


class SpiffeIdError(ValueError):
    """Not a valid SPIFFE ID (or ID pattern); the message says why."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str  # lowercase
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()


@dataclass(frozen=True, slots=True)
class SpiffePattern:
    """A registry value: one SPIFFE ID, or every ID strictly below ``prefix``."""

    id: SpiffeId  # for a wildcard, the prefix (path without the trailing "/*")
    wildcard: bool

    def __str__(self) -> str:
        return f"{self.id}/*" if self.wildcard else str(self.id)

    @property
    def lookup_value(self) -> str:
        """The index value: the ID itself, or the prefix with a trailing slash."""
        return f"{self.id}/" if self.wildcard else str(self.id)

    def matches(self, candidate: SpiffeId) -> bool:
        if candidate.trust_domain != self.id.trust_domain:
            return False
        if not self.wildcard:
            return candidate.path == self.id.path
        return candidate.path.startswith(self.id.path + "/")


def is_spiffe(value: str) -> bool:
    return value[: len(SCHEME)].lower() == SCHEME


def _trust_domain(text: str, *, fold: bool) -> str:
    if not text:
        raise SpiffeIdError("missing trust domain")
    if "@" in text:
        raise SpiffeIdError("a SPIFFE ID has no user info")
    if ":" in text:
        raise SpiffeIdError("a SPIFFE ID has no port")
    domain = text.lower() if fold else text
    if domain != domain.lower():
        raise SpiffeIdError("trust domain must be lowercase (SPIFFE-ID §2.1)")
    if len(domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdError("trust domain longer than 255 characters")
    if not set(domain) <= _TRUST_DOMAIN_CHARS:
        raise SpiffeIdError(
            "trust domain may hold only letters, digits, '.', '-' and '_' (SPIFFE-ID §2.1)"
        )
    return domain


def _path(text: str) -> str:
    if not text:
        return ""
    segments = text.split("/")[1:]
    for segment in segments:
        if not segment:
            raise SpiffeIdError("empty path segment or trailing '/' (SPIFFE-ID §2.2)")
        if segment in (".", ".."):
            raise SpiffeIdError("'.' and '..' path segments are not allowed (SPIFFE-ID §2.2)")
        if not set(segment) <= _PATH_CHARS:
            raise SpiffeIdError(
                "path segments may hold only letters, digits, '.', '-' and '_' (SPIFFE-ID §2.2)"
            )
    return text


def _split(value: str) -> tuple[str, str]:
    if len(value) > MAX_ID_LENGTH:
        raise SpiffeIdError("longer than 2048 bytes (SPIFFE-ID §2.3)")
    if not value.startswith(SCHEME):
        raise SpiffeIdError("expected the scheme 'spiffe://' in lowercase")
    rest = value[len(SCHEME) :]
    if "?" in rest or "#" in rest:
        raise SpiffeIdError("a SPIFFE ID has no query or fragment")
    domain, slash, path = rest.partition("/")
    return domain, slash + path


def parse_spiffe_id(value: str) -> SpiffeId:
    """A SPIFFE ID from a certificate's URI SAN; raises SpiffeIdError."""
    domain, path = _split(value)
    return SpiffeId(_trust_domain(domain, fold=False), _path(path))


def trust_domain_key(text: str) -> str:
    """A trust domain named in the config (``spiffe_bundles``), lowercased."""
    return _trust_domain(text, fold=True)


def parse_spiffe_pattern(value: str) -> SpiffePattern:
    """A registry value: an ID, or an ID prefix followed by ``/*``."""
    text = value.strip()
    if text[: len(SCHEME)].lower() == SCHEME:
        text = SCHEME + text[len(SCHEME) :]  # the scheme is case-insensitive (RFC 3986 §3.1)
    wildcard = text.endswith("/*")
    if wildcard:
        text = text[:-2]
    if "*" in text:
        raise SpiffeIdError("'*' is only allowed as the whole last segment, e.g. spiffe://td/ns/*")
    domain, path = _split(text)
    return SpiffePattern(SpiffeId(_trust_domain(domain, fold=True), _path(path)), wildcard)


def prefix_lookup_values(spiffe_id: SpiffeId) -> Iterator[str]:
    """Index values of every wildcard pattern that could match this ID.

    One per ancestor path (``spiffe://td/``, ``spiffe://td/ns/``, ...), so a
    lookup costs a probe per path segment whatever the number of patterns.
    """
    base = f"{SCHEME}{spiffe_id.trust_domain}/"
    yield base
    segments = spiffe_id.segments
    for segment in segments[:-1]:
        base += segment + "/"
        yield base


def normalise_uri_san(uri: str) -> str:
    """The comparison form of a certificate URI: a valid SPIFFE ID as parsed, else as is."""
    if not is_spiffe(uri):
        return uri
    try:
        return str(parse_spiffe_id(uri))
    except SpiffeIdError:
        return uri


def svid_leaf_problem(cert: x509.Certificate) -> str | None:
    """Why this leaf is not an acceptable X.509-SVID, or None (X.509-SVID §4, §5.2)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            return "an X.509-SVID leaf must not be a CA (X.509-SVID §4.1)"
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "an X.509-SVID leaf must have keyUsage digitalSignature (X.509-SVID §4.3)"
    if not ku.digital_signature:
        return "an X.509-SVID leaf must have keyUsage digitalSignature (X.509-SVID §4.3)"
    if ku.key_cert_sign or ku.crl_sign:
        return "an X.509-SVID leaf must not have keyCertSign or cRLSign (X.509-SVID §4.3)"
    return None
