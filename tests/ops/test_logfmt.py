"""The text rendering: every field, one line whatever the input, RFC 3339 times."""

from __future__ import annotations

import datetime as dt
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.ops.logfmt import rfc3339, text_line

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_rfc3339_is_utc_with_milliseconds() -> None:
    moment = dt.datetime(2026, 12, 6, 21, 42, 19, 123456, tzinfo=dt.UTC)
    assert rfc3339(moment.timestamp()) == "2026-12-06T21:42:19.123Z"
    # The per-second cache must not leak one second's text into the next.
    assert rfc3339(moment.timestamp() + 1) == "2026-12-06T21:42:20.123Z"
    assert RFC3339_UTC.fullmatch(rfc3339(0.5)) and rfc3339(0.5).startswith("1970-01-01T00:00:00")


def test_text_line_keeps_every_field_and_quotes_what_is_not_a_word() -> None:
    line = text_line(
        {
            "status": 401,
            "client_id": None,
            "reason": "no client matches CN=x, O=y",
            "ok": True,
            "route": "/api",
            "word": "null",
            "number_text": "12",
        }
    )
    assert line == (
        'status=401 client_id=null reason="no client matches CN=x, O=y" ok=true route=/api '
        'word="null" number_text="12"'
    )


@given(st.text())
def test_no_value_can_start_a_line_or_a_field(value: str) -> None:
    line = text_line({"path": value, "status": 200})
    assert "\n" not in line and "\r" not in line
    assert "\u2028" not in line and "\u2029" not in line
    # The value reads back exactly, and the next field is still its own.
    rendered = line.removeprefix("path=").removesuffix(" status=200")
    assert (json.loads(rendered) if rendered.startswith('"') else rendered) == value
