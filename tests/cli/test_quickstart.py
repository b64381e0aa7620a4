"""``mtls-gateway quickstart`` on chosen ports: bound before it prints, busy ports in one line.

Before, with 8443 busy, it printed every curl line and "Ctrl-C stops
everything" and then died with ``address already in use``; it had no --port.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_main import CURL, _env, _popen, _wait_healthy, run_cli
from tests.conftest import echoed_headers, free_port


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _three_ports() -> list[str]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    return [str(p) for p in ports]


@pytest.mark.parametrize(("busy", "flag"), [(0, "--port"), (1, "--admin-port"), (2, "--echo-port")])
def test_a_busy_port_is_one_line_naming_its_flag_and_nothing_is_printed(
    tmp_path: Path, busy: int, flag: str
) -> None:
    ports = _three_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(ports[busy])))
        holder.listen()
        result = run_cli(
            "quickstart",
            "--dir",
            "demo",
            "--port",
            ports[0],
            "--admin-port",
            ports[1],
            "--echo-port",
            ports[2],
            cwd=tmp_path,
        )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == "", "nothing is printed before every port is bound"
    (line,) = result.stderr.splitlines()
    assert line.startswith("mtls-gateway: ") and f"127.0.0.1:{ports[busy]}" in line
    assert line.endswith(f"choose another port with {flag} N"), line


async def test_quickstart_on_given_ports_and_its_printed_lines_run_in_a_shell(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    if not CURL.exists():
        pytest.skip("/usr/bin/curl is not installed")
    port, admin, echo = _three_ports()
    args = ["quickstart", "--dir", "demo", "--port", port, "--admin-port", admin]
    proc = _popen([*args, "--echo-port", echo], tmp_path, _env())
    processes.append(proc)
    await _wait_healthy(proc, f"http://127.0.0.1:{admin}/healthz", tmp_path / "stderr.log")
    stdout = (tmp_path / "stdout.log").read_text()
    assert stdout.startswith("mtls-gateway quickstart: files in")
    printed = [line for line in stdout.splitlines() if line.startswith(("curl ", "TOKEN="))]
    assert all(f"https://localhost:{port}/" in line for line in printed)
    # The token lines as pasted into a shell: the printed token reaches the
    # auth: token route, bound to the certificate that fetched it.
    token_pair = printed[-2:]
    assert token_pair[0].startswith("TOKEN=") and "$TOKEN" in token_pair[1]
    shell = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(token_pair)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0, shell.stderr
    echoed = json.loads(shell.stdout)
    assert echoed["path"] == "/api/hello"
    assert echoed_headers(echoed)["x-client-id"] == ["mtls.client"]

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()
    # The ports are in the files, so `serve` and `check` see the same ones.
    check = run_cli("check", "--config", "demo/gateway.yaml", cwd=tmp_path)
    assert check.returncode == 0 and f"127.0.0.1:{port}" in check.stdout
