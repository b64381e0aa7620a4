"""One small exchange read whole: the gateway's own calls (token requests, discovery)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.upstream.errors import InvalidResponse
from gateway.upstream.head import request_head
from gateway.upstream.origin import parse_origin
from gateway.upstream.pool import UpstreamPool


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def fetch(
    pool: UpstreamPool,
    url: str,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    tls: ssl.SSLContext | None = None,
    connect_timeout: float,
    within: float,
    limit: int,
) -> Fetched:
    """``method url`` on a pooled connection, the answer read whole.

    ``within`` seconds bound it all, connecting included (TimeoutError, which
    UpstreamTimeout is too); an answer body over ``limit`` bytes is an
    InvalidResponse.  Other failures raise their UpstreamError.
    """
    origin = parse_origin(url)
    fields: CIMultiDict[str] = CIMultiDict(headers)
    fields["Host"] = origin.authority
    if body is not None:
        fields["Content-Length"] = str(len(body))
    head = request_head(method, origin.base_path or "/", fields, body is not None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with asyncio.timeout_at(deadline):
        conn = await pool.acquire(origin, min(connect_timeout, within), tls=tls)
        try:
            conn.start(
                head + (body or b""), head_only=method == "HEAD", timeout=within, deadline=deadline
            )
            await conn.response_head()
            parts: list[bytes] = []
            size = 0
            while chunk := await conn.read():
                size += len(chunk)
                if size > limit:
                    raise InvalidResponse(f"an answer over {limit} bytes")
                parts.append(chunk)
        except BaseException:
            conn.close()
            raise
    fetched = Fetched(conn.status, conn.headers(), b"".join(parts))
    conn.finish()
    return fetched
