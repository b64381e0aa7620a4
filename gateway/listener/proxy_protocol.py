"""PROXY protocol v1 and v2 headers (HAProxy's proxy-protocol.txt).  Pure.

An L4 load balancer that does not terminate TLS can still tell the gateway
who the client is: before the TLS ClientHello it sends one header naming the
original source and destination.  ``parse_header`` reads one from the start
of a byte string; every malformed input raises ``ProxyProtocolError`` and
nothing else (tests/listener/test_proxy_protocol.py checks that with hypothesis).

Sizes are bounded: a v1 header is at most 107 bytes (spec §2.1); a v2
header's TLV area is accepted up to ``MAX_V2_PAYLOAD`` bytes and skipped
unread (spec §2.2: "receivers ... must ignore TLVs they do not understand").
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # spec §2.1: "PROXY UNKNOWN ffff:...:ffff ... 65535 65535\r\n"
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"  # spec §2.2
V2_HEADER_LENGTH: Final = 16
MAX_V2_PAYLOAD: Final = 4096  # addresses (at most 216 bytes) plus TLVs

_V2_ADDRESS_LENGTHS: Final = {1: 12, 2: 36, 3: 216}  # AF_INET, AF_INET6, AF_UNIX
_TLS_HANDSHAKE_RECORD: Final = 0x16

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: Literal[1, 2]
    # "LOCAL" (v2) and "UNKNOWN" (v1): the balancer speaking for itself (health
    # checks); the connection's own addresses stand (spec §2.1, §2.2).
    local: bool
    source: Address | None
    destination: Address | None
    length: int  # bytes the header took on the wire


def classify(first: bytes) -> Literal["v1", "v2", "tls", "other"]:
    """What the first byte(s) of a connection start: a PROXY header, TLS, or neither."""
    if not first:
        return "other"
    if first[0] == _TLS_HANDSHAKE_RECORD:
        return "tls"
    if V1_PREFIX.startswith(first[: len(V1_PREFIX)]):
        return "v1"
    if V2_SIGNATURE.startswith(first[: len(V2_SIGNATURE)]):
        return "v2"
    return "other"


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while more bytes are needed."""
    kind = classify(data[: len(V2_SIGNATURE)])
    if kind == "v1":
        return _parse_v1(data)
    if kind == "v2":
        return _parse_v2(data)
    raise ProxyProtocolError("the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("PROXY v1 header not terminated by CRLF")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # Spec §2.1: the rest of the line is to be ignored.
        return ProxyHeader(1, True, None, None, length)
    if len(parts) != 6 or parts[0] != "PROXY":
        raise ProxyProtocolError("PROXY v1 header needs: PROXY TCP4|TCP6 src dst sport dport")
    _, family, src, dst, sport, dport = parts
    if family not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {family[:16]!r}")
    version_wanted = 4 if family == "TCP4" else 6
    source = (_v1_address(src, version_wanted), _v1_port(sport))
    destination = (_v1_address(dst, version_wanted), _v1_port(dport))
    return ProxyHeader(1, False, source, destination, length)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError("PROXY v1: invalid address") from None
    if address.version != version:
        raise ProxyProtocolError("PROXY v1: address does not match TCP4/TCP6")
    return str(address)


def _v1_port(text: str) -> int:
    # Spec §2.1: decimal, 0..65535, no leading zeroes.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError("PROXY v1: invalid port")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("PROXY v1: port out of range")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEADER_LENGTH:
        return None
    version_command, family_protocol, payload_length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError("PROXY v2: unsupported version")
    command = version_command & 0x0F
    if command not in (0, 1):  # LOCAL, PROXY
        raise ProxyProtocolError("PROXY v2: unknown command")
    if payload_length > MAX_V2_PAYLOAD:
        raise ProxyProtocolError(f"PROXY v2: header longer than {MAX_V2_PAYLOAD} bytes")
    total = V2_HEADER_LENGTH + payload_length
    if len(data) < total:
        return None
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family > 3 or protocol > 2:
        raise ProxyProtocolError("PROXY v2: unknown address family or protocol")
    needed = _V2_ADDRESS_LENGTHS.get(family, 0)
    if payload_length < needed:
        raise ProxyProtocolError("PROXY v2: address block shorter than its family needs")
    if command == 0 or family in (0, 3):
        # LOCAL, or an UNSPEC/UNIX source the gateway cannot use: the
        # connection's own endpoints stand (spec §2.2).
        return ProxyHeader(2, True, None, None, total)
    if protocol != 1:
        raise ProxyProtocolError("PROXY v2: a TLS listener carries STREAM connections only")
    block = data[V2_HEADER_LENGTH : V2_HEADER_LENGTH + needed]
    size = 4 if family == 1 else 16
    src = ipaddress.ip_address(block[:size])
    dst = ipaddress.ip_address(block[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", block, 2 * size)
    return ProxyHeader(2, False, (str(src), sport), (str(dst), dport), total)


def build_v1(source: Address, destination: Address) -> bytes:
    """A v1 header (for tests and tooling)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def build_v2(
    source: Address | None, destination: Address | None = None, *, tlvs: bytes = b""
) -> bytes:
    """A v2 header; ``source=None`` builds a LOCAL one (for tests and tooling)."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    destination = destination or (("::" if ":" in source[0] else "0.0.0.0"), 0)
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    payload = block + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(payload)) + payload
