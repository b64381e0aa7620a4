"""A real forwarding peer: NGINX terminates the client's mTLS and forwards the certificate.

NGINX (Debian's nginx-light; .ci/run installs it) listens with
``ssl_verify_client`` and proxies to the gateway over TLS with
``proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert``, from
127.0.0.1 (a trusted proxy) or, with ``proxy_bind 127.0.0.2``, from an address
the gateway does not trust.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    echoed_headers,
    free_port,
    name_secret,
    registry_client,
)
from tests.pki import Issued, Pki

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
CLIENT = registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))
FORWARDING = {"forwarded_client_cert": {"trusted_proxies": ["127.0.0.1/32"], "format": "nginx"}}

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (CI installs it: apt-get install nginx-light)"
)


def _nginx_config(
    directory: Path,
    pki: Pki,
    port: int,
    gateway_port: int,
    *,
    bind: str | None,
    verify: str,
    variable: str = "$ssl_client_escaped_cert",
) -> Path:
    bind_line = f"proxy_bind {bind};" if bind else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {pki.server.cert_path};
        ssl_certificate_key {pki.server.key_path};
        ssl_client_certificate {pki.ca.cert_path};
        ssl_verify_client {verify};
        location / {{
            proxy_pass https://127.0.0.1:{gateway_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-SSL-Client-Cert {variable};
            proxy_set_header X-Forwarded-For $remote_addr;
            {bind_line}
        }}
    }}
}}
"""
    )
    return conf


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")


StartNginx = Callable[..., Awaitable[str]]


@pytest.fixture
def start_nginx(tmp_path: Path, pki: Pki) -> Iterator[StartNginx]:
    processes: list[subprocess.Popen[bytes]] = []

    async def start(
        gw: GatewayUnderTest,
        *,
        bind: str | None = None,
        verify: str = "on",
        variable: str = "$ssl_client_escaped_cert",
    ) -> str:
        assert NGINX is not None
        directory = tmp_path / f"nginx{len(processes)}"
        directory.mkdir()
        port = free_port()
        conf = _nginx_config(
            directory, pki, port, gw.port, bind=bind, verify=verify, variable=variable
        )
        process = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(directory), "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        _wait_listening(port, process, directory / "error.log")
        return f"https://localhost:{port}"

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _via(
    url: str, pki: Pki, cert: Issued | None, path: str = "/", **kwargs: Any
) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=pki.client_context(cert))
    method = "POST" if "data" in kwargs else "GET"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url + path, **kwargs) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_nginx_forwarded_certificate_is_accepted(
    make_gateway: MakeGateway, start_nginx: StartNginx, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=FORWARDING)
    url = await start_nginx(gw)
    status, body = await _via(url, pki, client_cert)
    assert status == 200, body
    seen = echoed_headers(body)
    assert seen["x-client-id"] == ["mtls.client"]
    assert seen["x-client-cert-thumbprint"] == [client_cert.thumbprint]
    assert "x-ssl-client-cert" not in seen  # NGINX's header stops at the gateway
    assert seen["x-forwarded-for"] == ["127.0.0.1, 127.0.0.1"]  # NGINX's view, then ours


async def test_nginx_from_an_untrusted_address_is_stripped_and_refused(
    make_gateway: MakeGateway, start_nginx: StartNginx, pki: Pki, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[CLIENT], listener=FORWARDING)
    url = await start_nginx(gw, bind="127.0.0.2")
    status, body = await _via(url, pki, client_cert)
    assert (status, body["error"]) == (401, "client_certificate_required")


async def test_nginx_forwarding_a_certificate_from_an_unknown_ca_is_refused(
    make_gateway: MakeGateway, start_nginx: StartNginx, pki: Pki, tmp_path: Path
) -> None:
    stranger = Pki(tmp_path / "stranger", ca_name="Stranger CA").client("client")
    gw = await make_gateway(clients=[CLIENT], listener=FORWARDING)
    # optional_no_ca: NGINX passes the certificate on without judging it.
    url = await start_nginx(gw, verify="optional_no_ca")
    status, body = await _via(url, pki, stranger)
    assert (status, body["error"]) == (403, "access_denied")


async def test_nginx_token_is_bound_to_the_forwarded_certificate(
    make_gateway: MakeGateway,
    start_nginx: StartNginx,
    pki: Pki,
    client_cert: Issued,
    echo_upstream: Any,
) -> None:
    gw = await make_gateway(
        clients=[CLIENT],
        listener=FORWARDING,
        routes=[{"prefix": "/api", "upstream": echo_upstream.url, "auth": "token"}],
    )
    url = await start_nginx(gw)
    status, token = await _via(
        url,
        pki,
        client_cert,
        "/connect/token",
        data={"grant_type": "client_credentials", "client_id": "mtls.client"},
    )
    assert status == 200, token
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    digest = base64.urlsafe_b64encode(hashlib.sha256(client_cert.der).digest()).rstrip(b"=")
    assert claims["cnf"]["x5t#S256"] == digest.decode()
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    status, body = await _via(url, pki, client_cert, "/api/data", headers=bearer)
    assert status == 200, body
    # Another certificate (same DN, new key) through the same NGINX: not bound.
    status, body = await _via(url, pki, pki.client("client"), "/api/data", headers=bearer)
    assert (status, body["error"]) == (401, "invalid_token")


async def test_nginx_deprecated_ssl_client_cert_is_a_400_that_names_the_fix(
    make_gateway: MakeGateway, start_nginx: StartNginx, pki: Pki, client_cert: Issued
) -> None:
    """``$ssl_client_cert`` is PEM folded with LF + TAB: obs-fold (RFC 9112 §5.2).

    The HTTP parser refuses obs-fold in every request (a folded identity
    header is a smuggling shape, tests/security/test_spoofing.py), so this
    variable cannot work; the answer must say which one does.
    """
    gw = await make_gateway(clients=[CLIENT], listener=FORWARDING)
    url = await start_nginx(gw, variable="$ssl_client_cert")
    status, body = await _via(url, pki, client_cert)
    assert (status, body["error"]) == (400, "invalid_request"), body
    assert "$ssl_client_escaped_cert" in body["error_description"]
