"""An upstream's response field names, as the response filter and framing read them."""

from __future__ import annotations

# One entry per name spelling an upstream sends (a handful per upstream), so
# each answer's names cost a dict lookup each instead of two or three
# ``bytes`` method calls.  Bounded: past the bound, names are computed each
# time (an upstream choosing endless names gains nothing but its own cost).
_NAMES: dict[bytes, tuple[bytes, bytes, str]] = {}
_NAMES_BOUND = 1024


def response_name(name: bytes) -> tuple[bytes, bytes, str]:
    """``name`` lowered; its key (lowered, ``_`` read as ``-``: gateway/headers.py's
    rule); and its text (latin-1, as llhttp passed the octets on)."""
    known = _NAMES.get(name)
    if known is None:
        lowered = name.lower()
        known = (lowered, lowered.replace(b"_", b"-"), name.decode("latin-1"))
        if len(_NAMES) < _NAMES_BOUND:
            _NAMES[name] = known
    return known
