#!/usr/bin/env python3
"""What the ``h2`` library alone costs per request on the server side, in memory.

The HTTP/2 row of ``compare.py`` puts the gateway far below NGINX.  This
sizes the floor the project's choice of HTTP/2 library sets: a client and a
server ``H2Connection`` exchange bytes in memory (no sockets, no TLS, no
event loop, no pipeline), with the request and answer fields of the bench's
h2load run, 32 streams in flight as ``h2load -m 32`` keeps them.  Only the
server side's calls are timed: ``receive_data`` for the request, then
``send_headers``, ``send_data`` with END_STREAM and ``data_to_send`` for the
answer, which is what the gateway's HTTP/2 protocol asks of h2 per stream,
with the gateway's server configuration (inbound validation on, outbound
validation off).

    python3 bench/h2_library.py            # 20,000 requests, 5 runs
    python3 bench/h2_library.py -n 50000 --runs 3

It prints CPU µs per request (``time.process_time``, median of the runs).
Compare it with NGINX's whole CPU per h2 request in ``compare.py --modes h2``:
a gateway cannot spend less per request than this, whatever its own code does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:8443"),
    (b":path", b"/"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
ANSWER = [
    (b":status", b"200"),
    (b"content-type", b"text/plain"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Mon, 07 Dec 2026 08:00:00 GMT"),
    (b"content-length", b"13"),
]
BODY = b"hello, world\n"


def run(requests: int, in_flight: int) -> float:
    """Server-side CPU seconds for ``requests`` request/answer exchanges."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(
        H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the SETTINGS ack
    spent = 0.0
    done = 0
    while done < requests:
        batch = min(in_flight, requests - done)
        for _ in range(batch):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        wire = client.data_to_send()
        started = time.process_time()
        events = server.receive_data(wire)
        for event in events:
            if isinstance(event, RequestReceived):
                assert event.stream_id is not None
                server.send_headers(event.stream_id, ANSWER)
                server.send_data(event.stream_id, BODY, end_stream=True)
        answer = server.data_to_send()
        spent += time.process_time() - started
        for event in client.receive_data(answer):
            flow = getattr(event, "flow_controlled_length", 0)
            stream_id = getattr(event, "stream_id", 0)
            if flow and stream_id:
                client.acknowledge_received_data(flow, stream_id)
        server.receive_data(client.data_to_send())  # WINDOW_UPDATEs, outside the timing
        done += batch
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=20_000)
    parser.add_argument("-m", "--in-flight", type=int, default=32, help="streams per batch")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    figures = [run(args.requests, args.in_flight) / args.requests * 1e6 for _ in range(args.runs)]
    median = statistics.median(figures)
    shown = ", ".join(f"{f:.1f}" for f in figures)
    print(f"h2 server side: {median:.1f} us of CPU per request (median of {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
