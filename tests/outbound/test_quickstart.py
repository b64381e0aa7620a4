"""``mtls-gateway quickstart --outbound``: one gateway calls another, curl line as printed."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.cli.test_main import (
    CURL,
    QUICKSTART_PORTS,
    _curl_lines,
    _env,
    _popen,
    _port_taken,
    _run_curl,
    _wait_healthy,
    run_cli,
)
from tests.conftest import echoed_headers
from tests.outbound.conftest import x5t_s256

CALLER_PORTS = (8444, 9902, 15001)
OUTBOUND_LINE = "curl http://127.0.0.1:15001/hello"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_outbound_flag_adds_a_caller_config_and_one_curl_line(tmp_path: Path) -> None:
    plain = run_cli("quickstart", "--dir", "demo", "--no-serve", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert not (tmp_path / "demo" / "outbound.yaml").exists(), "the default is unchanged"

    result = run_cli("quickstart", "--dir", "demo", "--no-serve", "--outbound", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = _curl_lines(result.stdout)
    assert lines[:5] == _curl_lines(plain.stdout)
    assert lines[5:] == [OUTBOUND_LINE]
    check = run_cli("check", "--config", "demo/outbound.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr


async def test_quickstart_outbound_curl_line_works_as_printed(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    if not CURL.exists():
        pytest.skip("/usr/bin/curl is not installed")
    taken = [p for p in (*QUICKSTART_PORTS, *CALLER_PORTS) if _port_taken(p)]
    if taken:
        pytest.skip(f"quickstart binds fixed ports; taken on this machine: {taken}")
    curl_home = tmp_path / "curl-home"
    curl_home.mkdir()
    (curl_home / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')

    proc = _popen(["quickstart", "--dir", "demo", "--outbound"], tmp_path, _env())
    processes.append(proc)
    try:
        for admin in (9901, 9902):
            await _wait_healthy(proc, f"http://127.0.0.1:{admin}/healthz", tmp_path / "stderr.log")
    except pytest.fail.Exception:
        if "cannot listen on" in (tmp_path / "stderr.log").read_text():
            pytest.skip("a quickstart port was taken while starting (another process)")
        raise
    lines = _curl_lines((tmp_path / "stdout.log").read_text())
    assert lines[-1] == OUTBOUND_LINE
    status, body = await asyncio.to_thread(_run_curl, lines[-1], tmp_path, curl_home)

    proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()

    assert status == 200, body
    headers = echoed_headers(json.loads(body))
    assert headers["x-client-id"] == ["mtls.client"]
    client = x509.load_pem_x509_certificate((tmp_path / "demo" / "pki" / "client.pem").read_bytes())
    der = client.public_bytes(serialization.Encoding.DER)
    assert headers["x-client-cert-sha256"] == [x5t_s256(der)]
    (authorization,) = headers["authorization"]
    payload = authorization.removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["iss"] == "https://localhost:8443"
    assert claims["cnf"]["x5t#S256"] == x5t_s256(der)
