"""The limits one downstream HTTP/2 connection enforces, with their defaults and why."""

from __future__ import annotations

from dataclasses import dataclass

from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings

# h2's HPACK decoder refuses a block that decodes to more (h2's
# DEFAULT_MAX_HEADER_LIST_SIZE), whatever was advertised.
HARD_HEADER_LIST_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Http2Limits:
    # SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2 recommends no less than
    # 100; NGINX's http2_max_concurrent_streams is 128).  A stream counts until
    # its answer ended, so it bounds the handlers one connection runs at once.
    # A stream past it is refused with RST_STREAM REFUSED_STREAM, which a
    # client may retry (RFC 9113 §5.1.2, §8.7): clients send their first
    # requests before our SETTINGS arrive.  h2 itself ends the connection
    # (GOAWAY PROTOCOL_ERROR) only past twice the limit (``hard_stream_limit``).
    max_concurrent_streams: int = 100
    # SETTINGS_MAX_HEADER_LIST_SIZE: the decoded fields of one header block,
    # each counted as name + value + 32 (RFC 9113 §6.5.2).  A larger block is
    # answered 431 (RFC 9113 §10.5.1); the connection lives on.  Decoding
    # itself stops at HARD_HEADER_LIST_SIZE (h2's HPACK decoder): an
    # HPACK bomb past it ends the connection with GOAWAY ENHANCE_YOUR_CALM.
    # NGINX allows 4 x 8 KiB (large_client_header_buffers).
    max_header_list_size: int = 32 * 1024
    # Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE, RFC 9113
    # §6.9.2): the body bytes a peer may send before we give credit back.
    # Credit is returned as the pipeline reads the body (RequestBody's
    # pause/resume), so one stream buffers at most this plus
    # RequestBody.high_water.
    initial_window_size: int = 65535
    # The connection's receive window (raised by a WINDOW_UPDATE at start,
    # RFC 9113 §6.9.1): a few streams whose bodies nobody reads yet do not
    # stall the others.
    connection_window_size: int = 1024 * 1024
    # CVE-2023-44487 ("rapid reset"): a peer opens streams and cancels them at
    # once, so the concurrency limit never binds while every stream starts
    # work.  More than max_resets RST_STREAM frames from the peer within
    # reset_window seconds end the connection with GOAWAY ENHANCE_YOUR_CALM.
    # A gRPC client cancelling on deadlines stays far below 20 a second.
    max_resets: int = 200
    reset_window: float = 10.0
    # A connection without any open stream for this long gets a GOAWAY and is
    # closed (the HTTP/1.1 keep-alive timeout's counterpart).
    idle_timeout: float = 75.0

    @property
    def hard_stream_limit(self) -> int:
        """Open streams past which h2 ends the connection instead of our refusing one."""
        return 2 * self.max_concurrent_streams

    def local_settings(self, *, streams: int | None = None) -> Settings:
        """The server's SETTINGS (RFC 9113 §6.5.2) for these limits; no server push.

        ``streams``: the stream limit h2 holds the peer to, where it is not
        the one advertised (``hard_stream_limit``, after the SETTINGS went).
        """
        return Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: streams or self.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
                SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window_size,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )

    def __post_init__(self) -> None:
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if not 65535 <= self.connection_window_size < 2**31:
            raise ValueError("connection_window_size must be in [65535, 2**31)")
        if not 0 < self.initial_window_size < 2**31:
            raise ValueError("initial_window_size must be in (0, 2**31)")
        if not 0 < self.max_header_list_size <= HARD_HEADER_LIST_SIZE:
            raise ValueError(f"max_header_list_size must be in (0, {HARD_HEADER_LIST_SIZE}]")
        if self.max_resets < 1 or self.reset_window <= 0:
            raise ValueError("max_resets and reset_window must be positive")


def start_server_connection(h2: H2Connection, limits: Http2Limits) -> None:
    """Queue the server's preface (RFC 9113 §3.4) under ``limits``: SETTINGS, the connection window.

    Settings are effective at once in h2 (not only once acknowledged).  The
    SETTINGS frame advertises ``max_concurrent_streams``; then h2 is given
    ``hard_stream_limit`` to enforce, so that a stream past the advertised
    limit reaches the server protocol with its header block decoded (the
    HPACK state intact) and is refused alone with REFUSED_STREAM (§5.1.2).
    """
    h2.local_settings = limits.local_settings()
    h2.initiate_connection()
    h2.local_settings = limits.local_settings(streams=limits.hard_stream_limit)
    if limits.connection_window_size > 65535:
        h2.increment_flow_control_window(limits.connection_window_size - 65535)


class ResetCounter:
    """RST_STREAM frames from the peer, counted in fixed windows of ``window`` seconds."""

    __slots__ = ("_count", "_limit", "_since", "_window")

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._since = -window
        self._count = 0

    def count(self, now: float) -> bool:
        """One more reset at ``now``; True once past the limit in the current window."""
        if now - self._since > self._window:
            self._since = now
            self._count = 0
        self._count += 1
        return self._count > self._limit
