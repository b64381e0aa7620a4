"""Request paths: the one form routed and forwarded, and the readings upstreams apply.  Pure.

The gateway routes on the decoded path with dot segments removed
(``normalise_path``) and forwards exactly that path, encoded once.  An
upstream may still read those bytes as another path:

* Tomcat, Spring and Jetty drop ``;parameters`` from each segment before
  matching (Servlet path parameters): ``/private;x/`` is ``/private/``;
* IIS and the Windows file system drop a segment's trailing dots and spaces:
  ``/private./`` and ``/private%20/`` are ``/private/``;
* a framework or file system applying Unicode NFKC folds U+2025 (two dot
  leader) into ``..``, U+2024 and U+FF0E into ``.``, U+FF0F (full-width
  solidus) into ``/``, and full-width letters into ASCII.

So, besides backslashes and control characters (``refused_character``):

1. a segment other than ``.`` and ``..`` that any of these readings turns
   into a dot segment (``..;``, ``...``, ``.. ``, U+2025) is refused wherever
   it is (``ambiguous_dot_segment``): it could climb out of any prefix;
2. a path that these readings put on another route than the literal path is
   refused (``readings_disagree``): ``/private;x/`` is on ``/`` as written
   and on ``/private`` for Tomcat, so one of the two policies would be the
   wrong one.  Refused, not normalised: forwarding ``/private/`` would change
   the resource for an upstream that reads ``;`` literally.

A reading that stays on the route of the literal path changes nothing about
the policy, so ``/files/a.``, ``/api;v=2/cars`` and ``/files/wait…`` under one
route are relayed as they are (SECURITY.md, "Known limits").
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote

_REFUSED_CHARACTERS = re.compile(r"[\\\x00-\x1f\x7f]")


def refused_character(path: str) -> bool:
    """A backslash or a control character.

    Windows/IIS-style upstreams read ``\\`` as ``/``, so ``/public/..%5Cprivate``
    would reach /private past the /public policy; control characters have no
    business in a path either.  Refused, as Envoy can.
    """
    return _REFUSED_CHARACTERS.search(path) is not None


def _folded(path: str) -> str:
    """The NFKC form, where it differs (only non-ASCII text can change)."""
    return path if path.isascii() else unicodedata.normalize("NFKC", path)


def ambiguous_dot_segment(path: str) -> bool:
    """A segment other than "." or ".." that some upstream would read as one.

    Tomcat and Spring drop path parameters before resolving dot segments, so
    "/public/..;/private" is "/private" to them; Windows strips trailing dots
    and spaces, so "..." and ".. " become ".."; NFKC makes U+2025 "..".
    normpath sees ordinary names in all of these, and the policy of the wrong
    route would apply.
    """
    for segment in _folded(path).split("/"):
        bare = segment.split(";", 1)[0]
        if "." in bare and not bare.strip(". ") and segment not in (".", ".."):
            return True
    return False


def upstream_reading(path: str) -> str:
    """The decoded path as the most lenient upstream reads it.

    NFKC applied, then in each segment ``;parameters`` dropped and trailing
    dots and spaces stripped (except from "." and "..", which stay dot
    segments).
    """
    segments = []
    for segment in _folded(path).split("/"):
        bare = segment.split(";", 1)[0]
        segments.append(bare if bare in (".", "..") else bare.rstrip(". "))
    return "/".join(segments)


def readings_disagree(path: str, find: Callable[[str], object]) -> bool:
    """Does the lenient upstream reading land on another route than ``path``?

    ``find`` maps a normalised path to its route (or None for no route).
    """
    reading = upstream_reading(path)
    if reading == path:
        return False
    return find(normalise_path(reading)) is not find(normalise_path(path))


def normalise_path(path: str) -> str:
    """The decoded path with dot segments removed (RFC 3986 §5.2.4).

    Routing and forwarding both use this one form, so the upstream sees exactly
    the path whose policy was checked: ``/public/..%2Fadmin`` is ``/admin`` to
    both.  Repeated slashes collapse for the same reason.
    """
    normalised = posixpath.normpath(path) if path else "/"
    if normalised.startswith("//"):  # normpath keeps a leading "//" (POSIX)
        normalised = "/" + normalised.lstrip("/")
    if path.endswith("/") and normalised != "/":
        normalised += "/"
    return normalised


def encode_path(path: str) -> str:
    return quote(path, safe="/:@!$&'()*+,;=-._~")
