"""Zero-downtime rotation under load, the way Kubernetes updates a mounted Secret.

The kubelet writes a new timestamped directory and swaps the ``..data``
symlink; the gateway's paths go through it.  While a client load runs, the
server certificate, the CA bundle and the signing key are replaced: no request
fails, new material is served within 5 s, and a broken replacement leaves the
gateway serving (the failure counted in /metrics).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from pathlib import Path

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.parser import text_string_to_metric_families

from gateway.oauth.keys import generate_signing_key
from tests.conftest import GatewayUnderTest, MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki, name

CLIENT_DN = "CN=client, OU=production, O=company"


class MountedSecret:
    """A directory laid out like a kubelet Secret volume: files behind ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._version = 0

    def publish(self, files: dict[str, bytes]) -> None:
        self._version += 1
        version = self.root / f"..v{self._version}"
        version.mkdir()
        for file_name, data in files.items():
            (version / file_name).write_bytes(data)
            (version / file_name).chmod(0o600)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(version.name)
        os.replace(tmp_link, self.root / "..data")  # the atomic swap
        for file_name in files:
            link = self.root / file_name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / file_name)

    def path(self, file_name: str) -> Path:
        return self.root / file_name


def pem(issued: Issued) -> tuple[bytes, bytes]:
    key = issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return issued.pem, key


async def load(
    gw: GatewayUnderTest, client: Issued, stop: asyncio.Event, failures: list[str]
) -> int:
    """Requests on keep-alive and on fresh connections until ``stop``."""
    done = 0
    context = gw.pki.client_context(client)
    async with gw.session(client) as keep_alive:
        while not stop.is_set():
            try:
                async with keep_alive.get(gw.url + "/load") as r:
                    if r.status != 200:
                        failures.append(f"keep-alive {r.status}")
                    await r.read()
                connector = aiohttp.TCPConnector(ssl=context, force_close=True)
                async with (
                    aiohttp.ClientSession(connector=connector) as fresh,
                    fresh.get(gw.url + "/fresh") as r,
                ):
                    if r.status != 200:
                        failures.append(f"fresh {r.status}")
                    await r.read()
                done += 2
            except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
    return done


async def served_serial(gw: GatewayUnderTest, client: Issued) -> int:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", gw.port, ssl=gw.pki.client_context(client), server_hostname="localhost"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


async def eventually(check, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


async def reload_failures(gw: GatewayUnderTest, component: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "mtls_gateway_reloads_total"
        and s.labels == {"component": component, "outcome": "failed"}
    )


async def test_rotation_under_load_drops_no_request(
    make_gateway: MakeGateway, pki: Pki, client_cert: Issued, tmp_path: Path
) -> None:
    tls_secret = MountedSecret(tmp_path / "tls")
    server_cert, server_key = pem(pki.server)
    tls_secret.publish({"tls.crt": server_cert, "tls.key": server_key, "ca.crt": pki.ca.pem})
    key_secret = MountedSecret(tmp_path / "keys")
    first_key = generate_signing_key(tmp_path / "first.pem")
    key_secret.publish({"signing.pem": first_key.path.read_bytes()})

    gw = await make_gateway(
        clients=[
            registry_client("mtls.client", name_secret(CLIENT_DN)),
            registry_client("newcomer", name_secret("CN=newcomer, OU=production, O=company")),
        ],
        tls={
            "cert": str(tls_secret.path("tls.crt")),
            "key": str(tls_secret.path("tls.key")),
            "client_ca": str(tls_secret.path("ca.crt")),
        },
        extra={"tokens": {"signing_keys": [str(key_secret.path("signing.pem"))]}},
    )
    stop = asyncio.Event()
    failures: list[str] = []
    traffic = asyncio.create_task(load(gw, client_cert, stop, failures))
    try:
        await asyncio.sleep(0.5)

        # 1. New server certificate (same CA) and a second CA in the bundle.
        new_server = pki.certificate(
            name((NameOID.COMMON_NAME, "localhost")),
            dns=["localhost"],
            ips=["127.0.0.1"],
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        second_ca = Pki(tmp_path / "second", ca_name="Second CA")
        newcomer = second_ca.certificate(
            name(
                (NameOID.ORGANIZATION_NAME, "company"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "production"),
                (NameOID.COMMON_NAME, "newcomer"),
            )
        )
        cert_pem, key_pem = pem(new_server)
        tls_secret.publish(
            {"tls.crt": cert_pem, "tls.key": key_pem, "ca.crt": pki.ca.pem + second_ca.ca.pem}
        )

        async def new_cert_served() -> bool:
            return await served_serial(gw, client_cert) == new_server.cert.serial_number

        assert await eventually(new_cert_served), "new server certificate not served within 5 s"

        async def newcomer_accepted() -> bool:
            ctx = pki.client_context(newcomer)
            connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
            try:
                async with (
                    aiohttp.ClientSession(connector=connector) as session,
                    session.get(gw.url + "/newcomer") as r,
                ):
                    return r.status == 200
            except (aiohttp.ClientError, OSError):
                return False

        assert await eventually(newcomer_accepted), "new CA not trusted within 5 s"

        # 2. A new signing key replaces the old one in the Secret.
        second_key = generate_signing_key(tmp_path / "second.pem")
        key_secret.publish({"signing.pem": second_key.path.read_bytes()})

        async def tokens_use_new_key() -> bool:
            async with (
                gw.session(client_cert) as session,
                session.post(
                    gw.url + "/connect/token",
                    data={"grant_type": "client_credentials", "client_id": "mtls.client"},
                ) as r,
            ):
                token = (await r.json())["access_token"]
            return bool(jwt.get_unverified_header(token)["kid"] == second_key.kid)

        assert await eventually(tokens_use_new_key), "new signing key not used within 5 s"

        # 3. A broken replacement (truncated certificate): keep serving, count it.
        failed_before = await reload_failures(gw, "tls:listeners[0]")
        tls_secret.publish(
            {"tls.crt": cert_pem[: len(cert_pem) // 2], "tls.key": key_pem, "ca.crt": pki.ca.pem}
        )

        async def failure_counted() -> bool:
            return await reload_failures(gw, "tls:listeners[0]") > failed_before

        assert await eventually(failure_counted), "broken replacement not counted"
        assert await served_serial(gw, client_cert) == new_server.cert.serial_number
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        served = await traffic
        shutil.rmtree(tmp_path / "second", ignore_errors=True)
    assert served > 20
    assert failures == [], failures[:5]
