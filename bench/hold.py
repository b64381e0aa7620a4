"""Open N idle mTLS keep-alive connections and hold them (memory benchmark helper).

Each connection does a full TLS handshake with the client certificate, sends
one ``GET / HTTP/1.1`` and reads the whole response, then stays open and idle.
With ``--post-bytes N`` the request is a ``POST /bulk`` with an N-byte body
instead (sent 64 KiB at a time): what an idle connection keeps after it moved
data, when the upstream answers as much (RESULTS.md, session 10).
Driven by ``compare.py`` over stdin/stdout, one JSON object per line:

* after opening: ``{"opened": n, "ok200": n, "failed": n, "errors": {...}, "seconds": s}``
* on ``check``: ``{"alive": n}`` (connections the server has not closed)
* on ``exit`` or EOF: closes everything and exits.

Bounded: opening stops at ``--open-deadline``; the process exits by itself
after ``--hold-max`` seconds.

    python3 bench/hold.py --port 8443 --count 1000 --cert c.pem --key c.key --ca ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import resource
import ssl
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-hold\r\n\r\n"
POST_HEAD = b"POST /bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-hold\r\nContent-Length: %d\r\n\r\n"
PIECE = 65536


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def open_one(
    host: str, port: int, context: ssl.SSLContext, limit: float, post_bytes: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname="localhost"
        )
        try:
            if post_bytes:
                writer.write(POST_HEAD % post_bytes)
                piece = b"x" * min(post_bytes, PIECE)
                for start in range(0, post_bytes, PIECE):
                    writer.write(piece[: post_bytes - start])
                    await writer.drain()
            else:
                writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while length:  # a piece at a time: no response-sized object
                piece = await reader.read(min(length, PIECE))
                if not piece:
                    raise ConnectionError("the response ended early")
                length -= len(piece)
        except BaseException:
            writer.transport.abort()
            raise
    return reader, writer, status


async def run(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    gate = asyncio.Semaphore(args.parallel)
    started = time.monotonic()
    deadline = started + args.open_deadline

    async def one() -> None:
        async with gate:
            if time.monotonic() > deadline:
                errors["deadline"] += 1
                return
            try:
                reader, writer, status = await open_one(
                    args.host, args.port, context, 30.0, args.post_bytes
                )
            except Exception as exc:
                errors[type(exc).__name__] += 1
                return
            statuses[status] += 1
            conns.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(args.count)))
    report = {
        "requested": args.count,
        "opened": len(conns),
        "ok200": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "seconds": round(time.monotonic() - started, 2),
        "nofile": args.nofile,
    }
    print(json.dumps(report), flush=True)

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        async with asyncio.timeout(args.hold_max):
            while True:
                line = (await stdin.readline()).strip()
                if line == b"check":
                    await asyncio.sleep(0.2)  # let pending EOFs arrive
                    alive = sum(
                        1 for r, w in conns if not r.at_eof() and not w.transport.is_closing()
                    )
                    print(json.dumps({"alive": alive}), flush=True)
                else:  # "exit" or EOF
                    break
    except TimeoutError:
        pass
    finally:
        for _, writer in conns:
            writer.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--parallel", type=int, default=64, help="handshakes in flight")
    parser.add_argument("--open-deadline", type=float, default=300.0)
    parser.add_argument("--hold-max", type=float, default=600.0)
    parser.add_argument(
        "--post-bytes", type=int, default=0, help="POST /bulk this many bytes instead of a GET"
    )
    args = parser.parse_args()
    args.nofile = raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
        return
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
