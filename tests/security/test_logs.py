"""No secret in the logs: a real ``mtls-gateway serve`` at DEBUG, every log line grepped.

The process goes through the flows that handle secrets (tokens issued, used,
forged and put in the URL; HTTP Basic with a password; a torn signing key at
reload; refused certificates) and its whole stdout and stderr are searched
for the token, the signing key, any PEM block and the password.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Upstream, free_port, write_config
from tests.pki import Issued, Pki
from tests.security.conftest import MTLS_CLIENT


@dataclass
class ServedGateway:
    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    directory: Path
    config_path: Path


@contextlib.asynccontextmanager
async def serve_subprocess(
    directory: Path,
    pki: Pki,
    *,
    clients: list[dict[str, Any]],
    upstream: Upstream,
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    level: str = "INFO",
) -> AsyncIterator[ServedGateway]:
    """``python -m gateway serve`` on free ports, ready when /readyz answers 200."""
    port, admin = free_port(), free_port()
    config_path, _ = write_config(
        directory,
        pki,
        clients=clients,
        routes=[
            {"prefix": "/api", "upstream": upstream.url, "auth": "token"},
            {"prefix": "/", "upstream": upstream.url, "auth": "client"},
        ],
        extra={"logging": {"format": "json", "level": level, "access_log": True}},
    )
    config = yaml.safe_load(config_path.read_text())
    config["listeners"][0]["bind"] = f"127.0.0.1:{port}"
    config["admin"]["bind"] = f"127.0.0.1:{admin}"
    config_path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
        stdout=stdout,
        stderr=stderr,
    )
    served = ServedGateway(
        process, f"https://localhost:{port}", f"http://127.0.0.1:{admin}", directory, config_path
    )
    try:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while True:
                assert process.poll() is None, "the gateway exited at start"
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(served.admin_url + "/readyz") as r:
                        if r.status == 200:
                            break
                assert time.monotonic() < deadline, "the gateway never became ready"
                await asyncio.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_no_token_key_pem_or_password_reaches_the_logs(
    tmp_path: Path, pki: Pki, client_cert: Issued, echo_upstream: Upstream
) -> None:
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    stranger = pki.client("stranger")  # trusted CA, not registered: refused and logged
    with out_path.open("wb") as out, err_path.open("wb") as err:
        async with serve_subprocess(
            tmp_path,
            pki,
            clients=[MTLS_CLIENT],
            upstream=echo_upstream,
            stdout=out,
            stderr=err,
            level="DEBUG",
        ) as gw:
            context = pki.client_context(client_cert)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
                form = {"grant_type": "client_credentials", "client_id": "mtls.client"}
                async with s.post(gw.url + "/connect/token", data=form) as r:
                    assert r.status == 200
                    token: str = (await r.json())["access_token"]
                bearer = {"Authorization": f"Bearer {token}"}
                async with s.get(gw.url + "/api/ok", headers=bearer) as r:
                    assert r.status == 200
                forged = token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8)
                async with s.get(
                    gw.url + "/api/forged", headers={"Authorization": f"Bearer {forged}"}
                ) as r:
                    assert r.status == 401
                async with s.get(gw.url + f"/api/query?access_token={token}") as r:
                    assert r.status == 400
                async with s.get(gw.url + f"/client-route?token={token}", headers=bearer) as r:
                    assert r.status == 200
                password = "s3cr3t-password-never-logged"
                basic = base64.b64encode(f"mtls.client:{password}".encode()).decode()
                async with s.post(
                    gw.url + "/connect/token",
                    data=form,
                    headers={"Authorization": f"Basic {basic}"},
                ) as r:
                    assert r.status == 400
                async with s.post(
                    gw.url + "/connect/token", data={**form, "client_secret": password}
                ) as r:
                    assert r.status == 400
                async with s.post(gw.url + "/connect/introspect", data={"token": forged}) as r:
                    assert r.status == 200
            refused = aiohttp.TCPConnector(ssl=pki.client_context(stranger))
            async with aiohttp.ClientSession(connector=refused) as s, s.get(gw.url + "/x") as r:
                assert r.status == 403
            # The admin port is plain HTTP: nothing it serves may hold a secret either.
            async with aiohttp.ClientSession() as s:
                admin_text = ""
                for path in ("/healthz", "/readyz", "/metrics"):
                    async with s.get(gw.admin_url + path) as r:
                        admin_text += await r.text()
            assert "mtls_gateway_requests_total" in admin_text
            # A signing key torn mid-write: the reload failure is logged (once).
            key_path = gw.directory / "signing.pem"
            key_text = key_path.read_text()
            key_path.write_text(key_text[: len(key_text) // 2])
            gw.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while b"signing key reload failed" not in err_path.read_bytes():
                assert time.monotonic() < deadline, "the torn key was never reported"
                await asyncio.sleep(0.05)
            key_path.write_text(key_text)
    logs = out_path.read_bytes() + err_path.read_bytes()
    text = logs.decode("utf-8", "replace")
    assert "token_refused" in text and "auth_refused" in text  # the flows did log
    assert "signing key reload failed" in text
    private = serialization.load_pem_private_key(key_text.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    secrets = {
        "the access token": token,
        "the token's signature": token.rsplit(".", 1)[1],
        "the forged token": forged,
        "the Basic password": password,
        "the Basic credentials": basic,
        "a PEM block": "-----BEGIN",
        "a private key": "PRIVATE KEY",
        "the signing key's private scalar (base64url)": b64url(scalar),
        "the signing key's private scalar (hex)": scalar.hex(),
        "the signing key's PEM body": key_text.splitlines()[1],
        "the server key's PEM body": pki.server.key_path.read_text().splitlines()[1],
        "the client certificate's DER (base64)": base64.b64encode(client_cert.der).decode()[:64],
    }
    leaked = [what for what, secret in secrets.items() if secret in text]
    assert leaked == [], f"found in the logs: {leaked}"
    exposed = [what for what, secret in secrets.items() if secret in admin_text]
    assert exposed == [], f"served on the admin port: {exposed}"
