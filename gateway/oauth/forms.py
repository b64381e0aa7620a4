"""Reading ``application/x-www-form-urlencoded`` request bodies for the OAuth endpoints.

The caller controls every byte, so the body is read with a size cap and a
deadline, parsed without ever raising anything but ``InvalidRequestError``,
and held to RFC 6749 §3.1 and §3.2: empty parameters count as absent, and no
parameter may appear twice (a second ``scope`` or ``client_id`` would let two
parsers in a chain disagree about the request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import parse_qsl

from aiohttp.http_exceptions import HttpProcessingError

from gateway.oauth.errors import (
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from gateway.pipeline.messages import Request

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 64  # far more than any token or introspection request needs


def parse_form(body: bytes) -> dict[str, str]:
    """Decode a form body into single-valued parameters, empty ones dropped."""
    try:
        # UTF-8 is what RFC 6749 Appendix B encodes with; strict decoding turns
        # a malformed escape into an error rather than a silently mangled value.
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise InvalidRequestError("the form body is not valid UTF-8") from None
    except ValueError:
        raise InvalidRequestError(f"the form has more than {MAX_FIELDS} fields") from None
    form: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise InvalidRequestError(f"parameter {name!r} appears more than once")
        seen.add(name)
        if value:
            form[name] = value
    return form


def _is_form(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == FORM_CONTENT_TYPE


async def read_form(request: Request, *, max_bytes: int, read_within: float) -> Mapping[str, str]:
    """The request's form parameters; RFC 6749 §3.2 requires this media type."""
    if not _is_form(request.headers.get("Content-Type", "")):
        raise InvalidRequestError(f"the request body must be {FORM_CONTENT_TYPE}")
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise RequestTooLargeError(f"the request body exceeds {max_bytes} bytes")
    try:
        if request.content.is_eof():
            # The whole body came in with the head (the usual small form):
            # nothing left to wait for, so no deadline timer to arm.
            body = await _read_capped(request, max_bytes)
        else:
            # A deadline for the whole body: headers have one (limits), and a
            # caller trickling a body byte by byte must not hold a slot forever.
            async with asyncio.timeout(read_within):
                body = await _read_capped(request, max_bytes)
    except TimeoutError:
        raise RequestTimeoutError("the request body did not arrive in time") from None
    except (HttpProcessingError, ConnectionError):
        # A broken chunked encoding or a short body: the caller's fault, never a 5xx.
        raise InvalidRequestError("malformed request body") from None
    return parse_form(body)


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    """Read to the end, refusing as soon as more than ``max_bytes`` arrived."""
    body = bytearray()
    while chunk := await request.content.read(max_bytes + 1 - len(body)):
        body += chunk
        if len(body) > max_bytes:
            raise RequestTooLargeError(f"the request body exceeds {max_bytes} bytes")
    return bytes(body)
