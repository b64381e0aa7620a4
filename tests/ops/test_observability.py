"""The access log and the refusal events, read from a real gateway's output."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from gateway.ops.logs import TextFormatter
from tests.conftest import MakeGateway, Upstream, free_port, name_secret, registry_client
from tests.ops.test_logfmt import RFC3339_UTC
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"


def _pairs(line: str) -> dict[str, Any]:
    """Read a text line back: key=value, values bare words or JSON strings."""
    fields: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    rest = line
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            value, end = decoder.raw_decode(rest)
            rest = rest[end:].removeprefix(" ")
        else:
            value, _, rest = rest.partition(" ")
        fields[key] = value
    return fields


async def _gateway(make_gateway: MakeGateway, echo_upstream: Upstream, fmt: str) -> Any:
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        routes=[
            {"prefix": "/dead", "upstream": f"http://127.0.0.1:{free_port()}", "auth": "none"},
            {"prefix": "/", "upstream": echo_upstream.url, "auth": "client"},
        ],
    )
    assert gw.gateway.access_log is not None
    gw.gateway.access_log.stream = io.BytesIO()
    gw.gateway.access_log.format = fmt
    return gw


def _lines(gw: Any) -> list[str]:
    gw.gateway.access_log.flush()
    text: str = gw.gateway.access_log.stream.getvalue().decode()
    return text.splitlines()


async def test_access_log_fields(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued, pki: Pki
) -> None:
    gw = await _gateway(make_gateway, echo_upstream, "json")
    stranger = pki.client("stranger")
    async with gw.session(client_cert) as session:
        async with session.get(
            gw.url
            + "/hello?a=1&access_token=secret-value&x=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            headers={"User-Agent": "probe/1.0", "X-Request-Id": "req-42"},
        ) as r:
            assert r.status == 200
            body = await r.read()
        async with session.get(gw.url + "/dead/x") as r:
            assert r.status == 502
            error_body = await r.read()
    async with gw.session(stranger) as session:
        async with session.get(gw.url + "/hello") as r:
            assert r.status == 403
        async with session.post(
            gw.url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": "mtls.client"},
        ) as r:
            assert r.status == 401
    entries = {(e["path"], e["status"]): e for e in map(json.loads, _lines(gw))}
    ok = entries[("/hello", 200)]
    assert RFC3339_UTC.fullmatch(ok["time"])
    assert ok["query"] == "a=1&access_token=REDACTED&x=REDACTED"
    logged = json.dumps(list(entries.values()))
    assert "secret-value" not in logged and "eyJzdWIiOiJ4In0" not in logged
    assert ok["user_agent"] == "probe/1.0" and ok["request_id"] == "req-42"
    assert ok["bytes"] == len(body), "bytes is the body sent to the caller, no head"
    assert ok["thumbprint"] == client_cert.thumbprint and ok["upstream_error"] is None

    dead = entries[("/dead/x", 502)]
    assert dead["upstream_error"].startswith("unreachable")
    assert dead["bytes"] == len(error_body) > 0, "the gateway's own answers count too"

    refused = entries[("/hello", 403)]
    assert refused["thumbprint"] == stranger.thumbprint and refused["client_id"] is None
    token = entries[("/connect/token", 401)]
    assert token["thumbprint"] == stranger.thumbprint


async def test_text_access_log_keeps_fields_and_resists_line_injection(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await _gateway(make_gateway, echo_upstream, "text")
    forged = "/x%0Atime=2026-01-01T00:00:00.000Z%20event=request%20status=200%0D%0A"
    async with gw.session(client_cert) as session:
        async with session.get(gw.url + forged, headers={"User-Agent": "a\u2028b"}) as r:
            assert r.status >= 400  # refused (aiohttp's router: no route matches a newline)
        async with session.get(gw.url + "/hello?q=1", headers={"X-Request-Id": "r 1"}) as r:
            assert r.status == 200
    lines = _lines(gw)
    assert len(lines) == 2, lines
    injected, ok = map(_pairs, lines)
    assert injected["path"] == "/x\ntime=2026-01-01T00:00:00.000Z event=request status=200\r\n"
    assert injected["user_agent"] == "a\u2028b"
    # Every field of the JSON line, nulls included.
    assert list(ok) == [
        "time", "event", "listener", "client_id", "thumbprint", "route", "method", "path",
        "query", "status", "upstream_status", "upstream_error", "latency_ms", "bytes", "peer",
        "user_agent", "request_id",
    ]  # fmt: skip
    assert ok["query"] == "q=1" and ok["request_id"] == "r 1" and ok["upstream_error"] == "null"


async def test_text_refusal_event_carries_reason_thumbprint_and_subject(
    make_gateway: MakeGateway, echo_upstream: Upstream, pki: Pki
) -> None:
    gw = await _gateway(make_gateway, echo_upstream, "text")
    stranger = pki.client("stranger")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(TextFormatter())
    auth_log = logging.getLogger("gateway.auth")
    auth_log.addHandler(handler)
    try:
        async with gw.session(stranger) as session, session.get(gw.url + "/hello") as r:
            assert r.status == 403
    finally:
        auth_log.removeHandler(handler)
    (line,) = captured.getvalue().splitlines()
    event = _pairs(line)
    assert RFC3339_UTC.fullmatch(event["time"]) and event["level"] == "warning"
    assert event["event"] == "auth_refused" and event["kind"] == "no_match"
    assert event["reason"] and event["thumbprint"] == stranger.thumbprint
    assert "CN=stranger" in event["subject"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_exception_stays_on_one_line(fmt: str) -> None:
    import sys

    from gateway.ops.logs import JsonFormatter

    try:
        raise ValueError("line one\nline two")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed %s", ("x\ny",), sys.exc_info()
        )
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    rendered = formatter.format(record)
    assert "\n" not in rendered and "line two" in rendered
