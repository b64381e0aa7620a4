"""gateway.listener.records: record boundaries under any segmentation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.listener.records import RecordFramer, looks_like_plain_http


def _record(body_length: int) -> bytes:
    return bytes([23, 3, 3]) + body_length.to_bytes(2, "big") + b"x" * body_length


@given(
    lengths=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_complete_records_are_counted_once_whatever_the_segments(
    lengths: list[int], cuts: list[int]
) -> None:
    stream = b"".join(_record(n) for n in lengths)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = RecordFramer()
    seen = 0
    for start, end in itertools.pairwise(points):
        seen += framer.feed(stream[start:end])
        # Never more than the records whose last byte has arrived.
        ends, total, boundaries = 0, 0, {0}
        for n in lengths:
            total += 5 + n
            ends += total <= end
            boundaries.add(total)
        assert seen == ends
        # The TLS pump reads a slice ending mid-record until OpenSSL has nothing.
        assert framer.inside_record == (end not in boundaries)
    assert seen == len(lengths)


def test_a_header_split_across_segments() -> None:
    framer = RecordFramer()
    record = _record(10)
    assert framer.feed(record[:2]) == 0
    assert framer.feed(record[2:7]) == 0
    assert framer.feed(record[7:] + record[:3]) == 1
    assert framer.feed(record[3:]) == 1


@pytest.mark.parametrize(
    ("first", "plain"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"post /token HTTP/1.1\r\n", True),
        (b"\x16\x03\x01\x02\x00", False),  # a ClientHello's record header
        (b"\x80\x2e\x01", False),  # an SSLv2-style hello: not HTTP, left to OpenSSL
        (b"", False),
    ],
)
def test_a_request_line_is_told_from_a_tls_record(first: bytes, plain: bool) -> None:
    assert looks_like_plain_http(first) is plain
