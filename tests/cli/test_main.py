"""The real command line, run as a subprocess: ``python -m gateway …``.

Every user mistake must come out as one ``mtls-gateway: …`` line per problem on
stderr, exit status 1, and never a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import gateway
from gateway.registry.yaml_file import load_registry_file
from tests.conftest import Upstream, echoed_headers, free_port
from tests.spec_example import write_spec_example

REPO = Path(gateway.__file__).resolve().parent.parent
CURL = Path("/usr/bin/curl")
QUICKSTART_PORTS = (8443, 9901, 8081)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLS_GATEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or _env(),
        timeout=120,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr of a failed command: exit 1, no traceback, every line ours."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines, "an error must say what is wrong"
    assert all(line.startswith("mtls-gateway: ") for line in lines), lines
    return [line.removeprefix("mtls-gateway: ") for line in lines]


def problem_pattern(config: Path) -> re.Pattern[str]:
    """``file:key: message`` for one config file."""
    return re.compile(rf"^{re.escape(str(config))}:[\w.\[\]<>]+: \S")


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """SPEC's example config and registry over a fresh dev PKI; returns gateway.yaml."""
    return write_spec_example(tmp_path / "conf")


# --------------------------------------------------------------------------- basics


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mtls-gateway")
    for command in ("quickstart", "serve", "check", "certs", "keys", "clients"):
        assert command in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mtls-gateway {gateway.__version__}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["check", "--config", "x.yaml", "--bogus"], "unrecognized arguments: --bogus"),
        (["--bogus"], "see --help"),
        (["serve"], "--config"),
        (["serve", "--config", "x.yaml", "--workers", "zero"], "--workers"),
        (["keys", "generate", "k.pem", "--alg", "HS256"], "--alg"),
        (["clients", "frobnicate", "--config", "x.yaml"], "frobnicate"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    (line,) = error_lines(run_cli(*args, cwd=tmp_path))
    assert fragment in line


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error_lines(run_cli("check", "--config", missing)) == [f"{missing}: file not found"]


# --------------------------------------------------------------------------- certs and keys


def test_certs_init_prints_thumbprints_and_dn(tmp_path: Path) -> None:
    result = run_cli("certs", "init", tmp_path / "pki")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "subject    CN=client, OU=production, O=company" in out
    assert "subject    CN=self-signed-client, O=company" in out
    printed = re.findall(r"thumbprint ([0-9a-f]{40})$", out, re.MULTILINE)
    expected = [
        hashlib.sha1(
            x509.load_pem_x509_certificate((tmp_path / "pki" / f).read_bytes()).public_bytes(
                serialization.Encoding.DER
            ),
            usedforsecurity=False,
        ).hexdigest()
        for f in ("client.pem", "self-signed-client.pem")
    ]
    assert printed == expected

    again = run_cli("certs", "init", tmp_path / "pki")  # reused, same clients
    assert again.returncode == 0 and "reused" in again.stdout
    assert re.findall(r"thumbprint ([0-9a-f]{40})$", again.stdout, re.MULTILINE) == expected


def test_keys_generate_rs256(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    result = run_cli("keys", "generate", key_file, "--alg", "RS256")
    assert result.returncode == 0, result.stderr
    assert "RS256" in result.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    data = key_file.read_bytes()
    assert data.startswith(b"# alg: RS256\n")
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048

    # An existing key is never overwritten by accident.
    (line,) = error_lines(run_cli("keys", "generate", key_file, "--alg", "RS256"))
    assert str(key_file) in line
    assert key_file.read_bytes() == data


# --------------------------------------------------------------------------- check


def test_check_accepts_the_spec_example(spec_dir: Path) -> None:
    result = run_cli("check", "--config", spec_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{spec_dir}: ok")
    assert "1 client(s)" in result.stdout
    assert result.stderr == ""  # nothing to warn about


def test_check_warns_about_dns_in_openssl_order(spec_dir: Path) -> None:
    """Valid, so still ok (exit 0), but these DNs would never match: say so, with the fix."""
    (spec_dir.parent / "clients.yaml").write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {
                        "client_id": "pasted.from.openssl",
                        "secrets": [
                            {
                                "type": "X509CertificateName",
                                "value": "O=company, OU=production, CN=client",
                            }
                        ],
                    },
                    {
                        "client_id": "reversed.issuer",
                        "issuer": "O=mtls-gateway, CN=mtls-gateway dev CA",
                        "secrets": [{"type": "X509CertificateName", "value": "CN=other"}],
                    },
                ]
            }
        )
    )
    result = run_cli("check", "--config", spec_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{spec_dir}: ok")
    ca = spec_dir.parent / "pki" / "ca.pem"
    assert result.stderr.splitlines() == [
        "mtls-gateway: warning: client pasted.from.openssl: secrets[0]: DN "
        "'O=company, OU=production, CN=client' looks written least specific first "
        "(openssl's order) and would match no certificate of the usual shape; registries "
        "use most specific first: 'CN=client, OU=production, O=company'",
        "mtls-gateway: warning: client reversed.issuer: issuer: "
        "'O=mtls-gateway, CN=mtls-gateway dev CA' names no CA in client_ca, but reversed "
        f"it is the subject of {ca}: write 'CN=mtls-gateway dev CA, O=mtls-gateway'",
    ]


def test_check_lists_every_config_problem(spec_dir: Path) -> None:
    data = yaml.safe_load(spec_dir.read_text())
    data["issuer"] = "http://localhost:8443"
    data["listeners"][0]["bind"] = "127.0.0.1"
    data["listeners"][0]["tls"]["cert"] = "pki/missing.pem"
    data["registry"]["colour"] = "blue"
    data["tokens"]["lifetime"] = "one hour"
    data["routes"].append({"prefix": "/", "upstream": "http://127.0.0.1:1", "scopes": ["a"]})
    bad = spec_dir.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))

    lines = error_lines(run_cli("check", "--config", bad))
    pattern = problem_pattern(bad)
    assert all(pattern.match(line) for line in lines), lines
    keys = [line.removeprefix(f"{bad}:").split(": ")[0] for line in lines]
    assert sorted(keys) == sorted(
        [
            "issuer",
            "listeners[0].bind",
            "listeners[0].tls.cert",
            "registry.colour",
            "tokens.lifetime",
            "routes[1].scopes",
            "routes",  # duplicate prefix
        ]
    )


def test_check_lists_registry_and_tls_problems(spec_dir: Path) -> None:
    # The config itself is valid; what it points at is not.
    (spec_dir.parent / "clients.yaml").write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {"client_id": "a", "secrets": [{"type": "X509SanIp", "value": "300.1.1.1"}]},
                    {
                        "client_id": "b",
                        "secrets": [{"type": "X509CertificateName", "value": "FOO=x"}],
                    },
                ]
            }
        )
    )
    data = yaml.safe_load(spec_dir.read_text())
    data["listeners"][0]["tls"]["client_ca"] = "pki/server.key"  # not a certificate
    spec_dir.write_text(yaml.safe_dump(data))

    lines = error_lines(run_cli("check", "--config", spec_dir))
    registry = spec_dir.parent / "clients.yaml"
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{registry}:clients[0].secrets[0].value: expected an IPv4")
    assert lines[1].startswith(f"{registry}:clients[1].secrets[0].value: unknown attribute")
    assert lines[2].startswith(f"{spec_dir}:listeners[0].tls.client_ca: cannot read ")


# --------------------------------------------------------------------------- clients


def _clients(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("clients", *args, "--config", config)


def test_clients_list_and_show(spec_dir: Path) -> None:
    listed = _clients(spec_dir, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "mtls.client\tenabled \tscopes=api1\tsecrets=CertificateName,CertificateThumbprint"
    ]

    shown = _clients(spec_dir, "show", "mtls.client")
    assert shown.returncode == 0, shown.stderr
    client = yaml.safe_load(shown.stdout)
    assert client["client_id"] == "mtls.client"
    assert [s["type"] for s in client["secrets"]] == [
        "X509CertificateName",
        "X509CertificateThumbprint",
    ]

    (line,) = error_lines(_clients(spec_dir, "show", "nobody"))
    assert line.startswith("client nobody: not found")


def test_clients_add_by_flags(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    result = _clients(
        spec_dir,
        "add",
        "new.client",
        "--dn",
        "CN=new, OU=production, O=company",
        "--thumbprint",
        "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01",
        "--scope",
        "api1",
        "--scope",
        "api2",
    )
    assert result.returncode == 0, result.stderr
    added = {c.client_id: c for c in load_registry_file(registry)}["new.client"]
    assert [s.match_value for s in added.secrets] == [
        "CN=new, OU=production, O=company",
        "abcdef0123456789abcdef0123456789abcdef01",
    ]
    # The file holds the thumbprint in the form that matches, not as pasted.
    written = yaml.safe_load(registry.read_text())["clients"]
    (entry,) = [c for c in written if c["client_id"] == "new.client"]
    assert entry["secrets"][1] == {
        "type": "X509CertificateThumbprint",
        "value": "abcdef0123456789abcdef0123456789abcdef01",
    }
    assert added.allowed_scopes == ("api1", "api2")
    listed = _clients(spec_dir, "list").stdout
    assert "new.client\tenabled \tscopes=api1 api2" in listed


def test_clients_add_warns_about_a_dn_typed_in_openssl_order(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    result = _clients(spec_dir, "add", "typed", "--dn", "O=company, OU=production, CN=typed")
    assert result.returncode == 0, result.stderr  # added all the same
    assert "typed" in {c.client_id for c in load_registry_file(registry)}
    (line,) = result.stderr.splitlines()
    assert line.startswith("mtls-gateway: warning: client typed: secrets[0]: DN ")
    assert line.endswith("most specific first: 'CN=typed, OU=production, O=company'")

    fine = _clients(spec_dir, "add", "fine", "--dn", "CN=fine, OU=production, O=company")
    assert fine.returncode == 0 and fine.stderr == ""


def test_clients_add_refuses_an_existing_id_without_replace(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    before = registry.read_bytes()
    args = ("add", "mtls.client", "--dn", "CN=replaced")
    (line,) = error_lines(_clients(spec_dir, *args))
    assert line == "client mtls.client: already exists (use --replace)"
    assert registry.read_bytes() == before

    result = _clients(spec_dir, *args, "--replace")
    assert result.returncode == 0, result.stderr
    (client,) = load_registry_file(registry)
    assert [s.value for s in client.secrets] == ["CN=replaced"]


def test_clients_add_bad_thumbprint_names_client_and_field(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    before = registry.read_bytes()
    (line,) = error_lines(_clients(spec_dir, "add", "bad.client", "--thumbprint", "12:34"))
    assert line.startswith("client bad.client: --thumbprint: expected a SHA-1 thumbprint")
    assert line.endswith("got 4 digits")
    (line,) = error_lines(
        _clients(
            spec_dir, "add", "bad.client", "--dn", "CN=x", "--thumbprint", "\u200e" + "ab" * 20
        )
    )
    assert line.startswith("client bad.client: --thumbprint: expected a SHA-1 thumbprint")
    assert "U+200E (invisible" in line
    assert registry.read_bytes() == before


def test_clients_remove(spec_dir: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    result = _clients(spec_dir, "remove", "mtls.client")
    assert result.returncode == 0, result.stderr
    assert load_registry_file(registry) == []
    (line,) = error_lines(_clients(spec_dir, "remove", "mtls.client"))
    assert line.startswith("client mtls.client: not found")


def test_clients_export_then_import_round_trips(spec_dir: Path, tmp_path: Path) -> None:
    source_registry = spec_dir.parent / "clients.yaml"
    assert _clients(spec_dir, "add", "second", "--san-uri", "spiffe://x/y").returncode == 0
    exported = tmp_path / "export.yaml"
    result = _clients(spec_dir, "export", exported)
    assert result.returncode == 0, result.stderr
    to_stdout = _clients(spec_dir, "export")
    assert to_stdout.stdout == exported.read_text()

    other = write_spec_example(tmp_path / "other")
    other_registry = other.parent / "clients.yaml"
    other_registry.write_text("clients: []\n")
    result = _clients(other, "import", exported)
    assert result.returncode == 0, result.stderr
    assert "imported 2 client(s)" in result.stdout
    assert sorted(load_registry_file(other_registry), key=lambda c: c.client_id) == sorted(
        load_registry_file(source_registry), key=lambda c: c.client_id
    )


def test_clients_import_of_a_broken_file_changes_nothing(spec_dir: Path, tmp_path: Path) -> None:
    registry = spec_dir.parent / "clients.yaml"
    before = registry.read_bytes()
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {
                        "client_id": "x",
                        "secrets": [{"type": "X509CertificateThumbprint", "value": "zz"}],
                    },
                    {"client_id": "y", "secrets": [{"type": "X509SanIp", "value": "nope"}]},
                ]
            }
        )
    )
    lines = error_lines(_clients(spec_dir, "import", broken))
    assert [line.split(": ")[0] for line in lines] == [
        f"{broken}:clients[0].secrets[0].value",
        f"{broken}:clients[1].secrets[0].value",
    ]
    assert registry.read_bytes() == before


# --------------------------------------------------------------------------- serve


async def _wait_healthy(proc: subprocess.Popen[bytes], url: str, stderr: Path) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"exited with {proc.returncode}: {stderr.read_text()}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"not healthy within 30 s: {stderr.read_text()}")


def _popen(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=(cwd / "stdout.log").open("wb"),
        stderr=(cwd / "stderr.log").open("wb"),
    )


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed (by pid) if the test left them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_serve_answers_mtls_and_stops_on_sigterm(
    spec_dir: Path, echo_upstream: Upstream, reaper: list[subprocess.Popen[bytes]]
) -> None:
    port, admin = free_port(), free_port()
    env = _env(
        MTLS_GATEWAY_LISTENERS__0__BIND=f"127.0.0.1:{port}",
        MTLS_GATEWAY_ADMIN__BIND=f"127.0.0.1:{admin}",
        MTLS_GATEWAY_ROUTES__0__UPSTREAM=echo_upstream.url,
    )
    work = spec_dir.parent
    proc = _popen(["serve", "--config", spec_dir], work, env)
    reaper.append(proc)
    await _wait_healthy(proc, f"http://127.0.0.1:{admin}/healthz", work / "stderr.log")

    pki = work / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"https://localhost:{port}/hello", headers={"X-Client-Id": "spoofed"}) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    headers = echoed_headers(body)
    assert body["path"] == "/hello"
    assert headers["x-client-id"] == ["mtls.client"]  # the spoofed copy is gone
    assert headers["x-client-cert-subject"] == ["CN=client, OU=production, O=company"]

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert "Traceback" not in (work / "stderr.log").read_text()


def test_serve_with_the_port_taken_is_one_line(spec_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = _env(
            MTLS_GATEWAY_LISTENERS__0__BIND=f"127.0.0.1:{port}",
            MTLS_GATEWAY_ADMIN__BIND=f"127.0.0.1:{free_port()}",
        )
        result = run_cli("serve", "--config", spec_dir, env=env)
    (line,) = error_lines(result)
    assert line.startswith(f"{spec_dir}:listeners[0].bind: cannot listen on 127.0.0.1:{port}")


# --------------------------------------------------------------------------- quickstart


def _curl_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("curl ")]


def test_quickstart_no_serve_prints_curl_lines(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--dir", "demo", "--no-serve", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = _curl_lines(result.stdout)
    assert len(lines) == 5  # the fifth sends $TOKEN (tests/cli/test_quickstart.py runs it)
    assert "/connect/token" in lines[0] and "grant_type=client_credentials" in lines[0]
    assert all("https://localhost:8443/" in line for line in lines)
    for name in ("gateway.yaml", "clients.yaml", "pki/ca.pem", "keys/signing.pem"):
        assert (tmp_path / "demo" / name).is_file(), name
    # Every file a curl line names exists, relative to where the user stands.
    for line in lines:
        words = shlex.split(line)
        for flag in ("--cacert", "--cert", "--key"):
            if flag in words:
                assert (tmp_path / words[words.index(flag) + 1]).is_file()

    again = run_cli("quickstart", "--dir", "demo", "--no-serve", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _curl_lines(again.stdout) == lines  # reused, not regenerated
    assert run_cli("check", "--config", "demo/gateway.yaml", cwd=tmp_path).returncode == 0


def _run_curl(line: str, cwd: Path, curl_home: Path) -> tuple[int, str]:
    """Run a printed line exactly as written; the HTTP status comes from a curlrc."""
    words = shlex.split(line)
    assert words[0] == "curl"
    result = subprocess.run(
        [str(CURL), *words[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CURL_HOME": str(curl_home)},
    )
    assert result.returncode == 0, (line, result.stderr)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


async def test_quickstart_curl_lines_work_as_printed(
    tmp_path: Path, reaper: list[subprocess.Popen[bytes]]
) -> None:
    if not CURL.exists():
        pytest.skip("/usr/bin/curl is not installed")
    taken = [p for p in QUICKSTART_PORTS if _port_taken(p)]
    if taken:
        pytest.skip(f"quickstart binds fixed ports; taken on this machine: {taken}")
    curl_home = tmp_path / "curl-home"
    curl_home.mkdir()
    # The lines stay exactly as printed; this only makes curl add the status code.
    (curl_home / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')

    proc = _popen(["quickstart", "--dir", "demo"], tmp_path, _env())
    reaper.append(proc)
    try:
        await _wait_healthy(proc, "http://127.0.0.1:9901/healthz", tmp_path / "stderr.log")
    except pytest.fail.Exception:
        if "cannot listen on" in (tmp_path / "stderr.log").read_text():
            pytest.skip("a quickstart port was taken while starting (another process)")
        raise
    lines = _curl_lines((tmp_path / "stdout.log").read_text())
    assert len(lines) == 5
    lines = [line for line in lines if "$TOKEN" not in line]  # needs a shell: test_quickstart.py
    results = [await asyncio.to_thread(_run_curl, line, tmp_path, curl_home) for line in lines]

    proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()

    status, body = results[1]
    assert status == 200, body
    assert echoed_headers(json.loads(body))["x-client-id"] == ["mtls.client"]
    status, body = results[2]
    assert status == 200, body
    assert echoed_headers(json.loads(body))["x-client-id"] == ["mtls.self-signed"]
    status, body = results[3]
    assert status == 401, body
    assert json.loads(body)["error"] == "client_certificate_required"

    # Last, because xfail ends the test: the token line needs /connect/token,
    # which another change is adding.  Until then the request falls through to
    # the echo upstream, which answers with what it received.
    status, body = results[0]
    answer = json.loads(body)
    if answer.get("path") == "/connect/token" and "method" in answer:
        pytest.xfail("token endpoint (issue 3)")
    assert status == 200, body
    assert answer["token_type"] == "Bearer"
    assert isinstance(answer["access_token"], str) and answer["access_token"].count(".") == 2
    assert answer["scope"] == "api1"
