"""Certificates made with plain `openssl`, the way tutorials print them, through the whole stack.

The identity issue's findings, each as an attack that must fail (or a
tutorial that must work), with the system's `openssl` 3 command line making
every client certificate:

- `openssl req -x509` with its defaults writes CA:TRUE. Registered by
  thumbprint alone (the fingerprint pasted as openssl prints it), it gets a
  token and a proxied 200; its key mints a leaf named like a PKI client, which
  is refused;
- a self-signed certificate without basicConstraints or keyUsage but with
  `nsCertType=client,sslCA`: OpenSSL takes it as a CA. Its minted leaf is
  refused;
- `openssl x509 -req -CA ca.pem` without `-extfile` writes an X.509 v1 leaf:
  an ordinary PKI client, matched by DN.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import (
    MakeGateway,
    echoed_headers,
    name_secret,
    registry_client,
    thumbprint_secret,
)
from tests.pki import Issued, Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

CLIENT_DN = "CN=client, OU=production, O=company"
MTLS_CLIENT = registry_client("mtls.client", name_secret(CLIENT_DN))
NS_CA_CONFIG = """
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = ns-ca
[ext]
nsCertType = client, sslCA
"""


def openssl(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def issued(directory: Path, stem: str, chain: tuple[str, ...] = ()) -> Issued:
    """The files as an Issued, the certificate file holding ``stem`` then ``chain``."""
    pem = (directory / f"{stem}.pem").read_bytes()
    bundle = directory / f"{stem}.chain.pem"
    bundle.write_bytes(pem + b"".join((directory / f"{c}.pem").read_bytes() for c in chain))
    key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), None)
    return Issued(x509.load_pem_x509_certificate(pem), key, bundle, directory / f"{stem}.key")  # type: ignore[arg-type]


def self_signed(directory: Path, stem: str, *extra: str) -> str:
    """`openssl req -x509` as tutorials run it; returns the SHA-1 fingerprint as printed."""
    openssl(
        directory,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-days", "30", *extra,
    )  # fmt: skip
    printed = openssl(directory, "x509", "-in", f"{stem}.pem", "-noout", "-fingerprint", "-sha1")
    return printed.strip().split("=", 1)[1]  # "B5:31:..."


def mint(directory: Path, stem: str, subject: str, issuer: str) -> None:
    """A leaf signed by ``issuer``'s key (`openssl x509 -req`, no -extfile: X.509 v1)."""
    openssl(
        directory,
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", subject,
    )  # fmt: skip
    openssl(
        directory,
        "x509", "-req", "-in", f"{stem}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
        "-CAcreateserial", "-out", f"{stem}.pem", "-days", "30",
    )  # fmt: skip


async def test_req_x509_defaults_registered_by_thumbprint_get_a_token_and_a_200(
    make_gateway: MakeGateway, tmp_path: Path, client_cert: Issued
) -> None:
    fingerprint = self_signed(tmp_path, "self", "-subj", "/CN=self-issued")
    own = issued(tmp_path, "self")
    assert own.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    gw = await make_gateway(
        clients=[MTLS_CLIENT, registry_client("self.issued", thumbprint_secret(fingerprint))]
    )
    async with gw.session(own) as session:
        form = {"grant_type": "client_credentials", "client_id": "self.issued"}
        async with session.post(gw.url + "/connect/token", data=form) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["access_token"]
        async with session.get(gw.url + "/orders") as r:
            assert r.status == 200
            assert echoed_headers(await r.json())["x-client-id"] == ["self.issued"]
    assert token.count(".") == 2

    # Its key signs a leaf carrying the PKI client's DN (openssl's RDN order).
    mint(tmp_path, "minted", "/O=company/OU=production/CN=client", issuer="self")
    minted = issued(tmp_path, "minted", chain=("self",))
    async with gw.session(minted) as session:
        async with session.get(gw.url + "/orders") as r:
            assert r.status == 403
            body = await r.json()
        assert "not issued by a trusted CA" in body["error_description"]
        form = {"grant_type": "client_credentials", "client_id": "mtls.client"}
        async with session.post(gw.url + "/connect/token", data=form) as r:
            assert r.status == 401
            body = await r.json()
        assert body["error"] == "invalid_client"
        assert "not issued by a trusted CA" in body["error_description"]


async def test_a_ns_cert_type_ssl_ca_certificate_mints_nothing(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    config = tmp_path / "ns.cnf"
    config.write_text(NS_CA_CONFIG)
    fingerprint = self_signed(tmp_path, "ns", "-config", str(config))
    own = issued(tmp_path, "ns")
    with pytest.raises(x509.ExtensionNotFound):
        own.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    mint(tmp_path, "minted", "/O=company/OU=production/CN=client", issuer="ns")
    minted = issued(tmp_path, "minted", chain=("ns",))
    gw = await make_gateway(
        clients=[MTLS_CLIENT, registry_client("ns.client", thumbprint_secret(fingerprint))]
    )
    async with gw.session(own) as session, session.get(gw.url + "/x") as r:
        assert r.status == 200  # its own exact certificate: yes
    async with gw.session(minted) as session, session.get(gw.url + "/x") as r:
        assert r.status == 403  # anything its key signs: never


async def test_a_v1_leaf_from_openssl_x509_req_is_matched_by_dn(
    make_gateway: MakeGateway, pki: Pki, tmp_path: Path
) -> None:
    shutil.copy(pki.ca.cert_path, tmp_path / "ca.pem")
    shutil.copy(pki.ca.key_path, tmp_path / "ca.key")
    mint(tmp_path, "v1", "/O=company/OU=production/CN=client", issuer="ca")
    leaf = issued(tmp_path, "v1")
    if leaf.cert.version is not x509.Version.v1:
        pytest.skip("this openssl writes v3 without -extfile")
    gw = await make_gateway(clients=[MTLS_CLIENT])
    async with gw.session(leaf) as session, session.get(gw.url + "/x") as r:
        assert r.status == 200
        assert echoed_headers(await r.json())["x-client-id"] == ["mtls.client"]
