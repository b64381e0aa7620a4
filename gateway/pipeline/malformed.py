"""The caller's request body broke its framing (a malformed chunk).

Raised by the HTTP/1.1 reader into the body being read, and caught by the
upstream body sender, which answers 400.  It lives apart from messages.py
because mypyc, which compiles the data plane (setup.py), cannot compile a
subclass of a built-in exception other than ``Exception``.
"""

from __future__ import annotations


class MalformedBody(ConnectionError):
    """The body's framing broke (a malformed chunk): the caller's fault, a 400."""
