"""IdentityServer client export → registry: the mapping, the report, the CLI, and tokens.

The export is what ``JsonSerializer.Serialize`` gives for IdentityServer's
``Client`` objects (PascalCase), plus the camelCase and EF-entity shapes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.registry.identityserver import IdentityServerFormatError, import_identityserver
from gateway.registry.identityserver_document import parse_json
from gateway.registry.yaml_file import load_registry_file
from tests.conftest import MakeGateway, write_config
from tests.pki import Issued, Pki
from tests.registry.conftest import RedisServer, pasted_thumbprints, require_redis_server

REPO = Path(__file__).resolve().parents[2]
CLIENT_DN = "CN=client, OU=production, O=company"


def export(self_signed: Issued) -> list[dict[str, Any]]:
    """Four clients as an IdentityServer admin would have them (Duende defaults elsewhere)."""
    return [
        {
            "ClientId": "mtls.client",
            "ClientName": "PKI client",
            "Description": "moved from IdentityServer",
            "Enabled": True,
            "ProtocolType": "oidc",
            "AllowedGrantTypes": ["client_credentials", "authorization_code"],
            "AllowedScopes": ["api1", "api2"],
            "RedirectUris": ["https://app.example/callback"],
            "RequirePkce": True,
            "AllowOfflineAccess": True,
            "AccessTokenLifetime": 900,
            "AccessTokenType": 0,
            "ClientClaimsPrefix": "client_",
            "Claims": [
                {"Type": "tenant", "Value": "acme"},
                {"Type": "role", "Value": "reader"},
                {"Type": "role", "Value": "writer"},
            ],
            "ClientSecrets": [
                {"Type": "X509Name", "Value": CLIENT_DN, "Description": "client.dn"},
                {"Type": "SharedSecret", "Value": "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="},
            ],
        },
        {
            "clientId": "mtls.self",  # camelCase, the EF entity's nested shapes
            "allowedGrantTypes": [{"grantType": "client_credentials"}],
            "allowedScopes": [{"scope": "api1"}],
            "clientSecrets": [
                {
                    "type": "X509CertificateBase64",
                    "value": base64.b64encode(self_signed.der).decode(),
                    "expiration": "2099-01-01T00:00:00Z",
                }
            ],
            "accessTokenType": 1,
            "clientClaimsPrefix": "",
            "claims": [{"type": "sub", "value": "nope"}, {"type": "dept", "value": "ops"}],
            "id": 17,
        },
        {
            "ClientId": "spa",  # an interactive client: nothing this gateway can serve
            "AllowedGrantTypes": ["authorization_code"],
            "ClientSecrets": [],
            "RequireClientSecret": False,
        },
        {
            "ClientId": "secret.only",
            "AllowedGrantTypes": ["client_credentials"],
            "ClientSecrets": [{"Type": "SharedSecret", "Value": "hash"}],
        },
    ]


@pytest.fixture(scope="module")
def self_signed(pki: Pki) -> Issued:
    from cryptography.x509.oid import NameOID

    from tests.pki import name

    return pki.certificate(name((NameOID.COMMON_NAME, "imported-self")), self_signed=True)


def test_mapping_and_report(self_signed: Issued) -> None:
    result = import_identityserver(export(self_signed))
    by_id = {c.client_id: c for c in result.clients}
    assert sorted(by_id) == ["mtls.client", "mtls.self"]

    pki_client = by_id["mtls.client"].to_dict()
    assert pki_client == {
        "client_id": "mtls.client",
        "client_name": "PKI client",
        "description": "moved from IdentityServer",
        "allowed_grant_types": ["client_credentials"],
        "allowed_scopes": ["api1", "api2"],
        "access_token_lifetime": 900,
        "claims": {"client_tenant": "acme", "client_role": ["reader", "writer"]},
        "secrets": [
            {"type": "X509CertificateName", "value": CLIENT_DN, "description": "client.dn"}
        ],
    }
    self_client = by_id["mtls.self"]
    assert [(s.type, s.value) for s in self_client.secrets] == [
        ("X509CertificateThumbprint", self_signed.thumbprint)
    ]
    assert dict(self_client.claims) == {"dept": "ops"}

    report = "\n".join(result.report)
    for expected in (
        "client mtls.client: AllowedGrantTypes: authorization_code: not supported",
        "client mtls.client: ClientSecrets[1] (SharedSecret): shared secrets are not accepted",
        "client mtls.client: RedirectUris:",
        "client mtls.client: AllowOfflineAccess: True: not carried over (refresh tokens",
        "client mtls.self: ClientSecrets[0] (X509CertificateBase64): carried over as "
        f"X509CertificateThumbprint {self_signed.thumbprint}",
        "client mtls.self: claims[0] (sub): set by the token service",
        "client mtls.self: accessTokenType: 1: not carried over (only JWT access tokens",
        "client spa: skipped: no client_credentials grant; no certificate secret",
        "client secret.only: skipped: no certificate secret",
    ):
        assert expected.lower() in report.lower(), expected
    # Defaults carry nothing and are not reported, nor is store bookkeeping
    # (the EF row id); secret values never are.
    assert "RequirePkce" not in report and "ProtocolType" not in report
    assert "metadata" not in report and ": id" not in report.lower()
    assert "K7gNU3sdo" not in report
    assert result.skipped == ["client spa", "client secret.only"]


def test_wrapped_document_and_errors(self_signed: Issued) -> None:
    result = import_identityserver({"Clients": export(self_signed)[:1]})
    assert [c.client_id for c in result.clients] == ["mtls.client"]
    with pytest.raises(IdentityServerFormatError):
        import_identityserver({"ApiResources": []})
    duplicated = import_identityserver(export(self_signed)[:1] * 2)
    assert "client mtls.client: skipped: duplicate ClientId" in duplicated.report


def test_invalid_secret_value_skips_the_client_with_the_reason() -> None:
    result = import_identityserver(
        [
            {
                "ClientId": "bad",
                "AllowedGrantTypes": ["client_credentials"],
                "ClientSecrets": [{"Type": "X509Thumbprint", "Value": "not-hex"}],
            }
        ]
    )
    assert result.clients == []
    assert any("skipped" in line and "40 hex digits" in line for line in result.report)


# --- the CLI, the registry, and tokens ---------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "clients", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _export_file(tmp_path: Path, self_signed: Issued) -> Path:
    path = tmp_path / "identityserver-clients.json"
    path.write_text(json.dumps(export(self_signed), indent=2))
    return path


def test_cli_dry_run_and_report(tmp_path: Path, pki: Pki, self_signed: Issued) -> None:
    config, registry = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    source = _export_file(tmp_path, self_signed)
    dry = run_cli("import", "--format", "identityserver", source, "--dry-run", "--config", config)
    assert dry.returncode == 0, dry.stderr
    printed = yaml.safe_load(dry.stdout)
    assert [c["client_id"] for c in printed["clients"]] == ["mtls.client", "mtls.self"]
    assert "not supported" in dry.stderr and "skipped" in dry.stderr
    assert load_registry_file(registry) == []  # nothing written

    report = tmp_path / "report.txt"
    done = run_cli(
        "import", "--format", "identityserver", source, "--report", report, "--config", config
    )
    assert done.returncode == 0, done.stderr
    assert "2 client(s) converted, 2 skipped" in done.stderr
    assert "SharedSecret" in report.read_text()
    assert "imported 2 client(s)" in done.stdout


def test_cli_refuses_what_is_not_an_export(tmp_path: Path, pki: Pki) -> None:
    config, _ = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run_cli("import", "--format", "identityserver", bad, "--config", config)
    assert result.returncode == 1
    assert result.stderr.startswith(f"mtls-gateway: {bad}:line 1: invalid JSON")
    assert "Traceback" not in result.stderr


async def test_imported_clients_get_tokens(
    tmp_path: Path, pki: Pki, self_signed: Issued, client_cert: Issued, make_gateway: MakeGateway
) -> None:
    """Export → `clients import` → registry file → a gateway serving tokens to both clients."""
    config, registry = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    done = run_cli(
        "import",
        "--format",
        "identityserver",
        _export_file(tmp_path, self_signed),
        "--config",
        config,
    )
    assert done.returncode == 0, done.stderr
    imported = yaml.safe_load(registry.read_text())["clients"]
    gw = await make_gateway(clients=imported, tls={"pinned_certs": [str(self_signed.cert_path)]})
    for cert, client_id, lifetime in (
        (client_cert, "mtls.client", 900),
        (self_signed, "mtls.self", 300),
    ):
        async with (
            gw.session(cert) as session,
            session.post(
                gw.url + "/connect/token",
                data={"grant_type": "client_credentials", "client_id": client_id},
            ) as r,
        ):
            body = await r.json()
        assert r.status == 200, body
        assert body["expires_in"] == lifetime
        claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
        assert claims["client_id"] == client_id
        if client_id == "mtls.client":
            assert claims["client_tenant"] == "acme"
            assert body["scope"] == "api1 api2"


async def test_import_into_redis(
    tmp_path: Path, pki: Pki, self_signed: Issued, client_cert: Issued
) -> None:
    require_redis_server()
    server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        config, _ = write_config(
            tmp_path,
            pki,
            clients=[],
            routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
            extra={"registry": {"kind": "redis", "url": server.url, "key_prefix": "is-import:"}},
        )
        done = run_cli(
            "import",
            "--format",
            "identityserver",
            _export_file(tmp_path, self_signed),
            "--config",
            config,
        )
        assert done.returncode == 0, done.stderr
        listed = run_cli("list", "--config", config)
        assert listed.returncode == 0, listed.stderr
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [
            "mtls.client",
            "mtls.self",
        ]
        from gateway.config.load import load_config
        from gateway.runtime import assemble
        from gateway.server import start_gateway

        running = await start_gateway(assemble(load_config(config, env={})))
        try:
            url = f"https://localhost:{running.listener_ports[0]}/connect/token"
            connector = aiohttp.TCPConnector(ssl=pki.client_context(client_cert))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(
                    url, data={"grant_type": "client_credentials", "client_id": "mtls.client"}
                ) as r,
            ):
                assert r.status == 200, await r.text()
        finally:
            await running.stop(grace=0.5)
    finally:
        server.stop()


# --- the shapes users keep: EF entities, appsettings.json ----------------------------------


def ef_entity(client_cert: Issued, tb_cert: Issued) -> dict[str, Any]:
    """One row of Duende's EF ``Clients`` table with its child rows, every column
    at the entity's defaults except what an m2m client sets (as a DB dump gives it)."""
    return {
        "Id": 3,
        "Enabled": True,
        "ClientId": "m2m.ef",
        "ProtocolType": "oidc",
        "ClientSecrets": [
            {
                "Id": 7,
                "Description": "dn",
                "Value": CLIENT_DN,
                "Expiration": None,
                "Type": "X509Name",
                "Created": "2024-05-01T10:00:00Z",
                "ClientId": 3,
            },
            {
                "Id": 8,
                "Description": None,
                "Value": tb_cert.thumbprint.upper(),
                "Expiration": "2099-01-01T00:00:00",
                "Type": "X509Thumbprint",
                "Created": "2024-05-01T10:00:00Z",
                "ClientId": 3,
            },
        ],
        "RequireClientSecret": True,
        "ClientName": "EF client",
        "Description": None,
        "ClientUri": None,
        "LogoUri": None,
        "RequireConsent": False,
        "AllowRememberConsent": True,
        "AlwaysIncludeUserClaimsInIdToken": False,
        "AllowedGrantTypes": [{"Id": 5, "GrantType": "client_credentials", "ClientId": 3}],
        "RequirePkce": True,
        "AllowPlainTextPkce": False,
        "RequireRequestObject": False,
        "AllowAccessTokensViaBrowser": False,
        "RequireDPoP": False,
        "DPoPValidationMode": 1,
        "DPoPClockSkew": "00:05:00",
        "RedirectUris": [],
        "PostLogoutRedirectUris": [],
        "FrontChannelLogoutUri": None,
        "FrontChannelLogoutSessionRequired": True,
        "BackChannelLogoutUri": None,
        "BackChannelLogoutSessionRequired": True,
        "AllowOfflineAccess": False,
        "AllowedScopes": [
            {"Id": 9, "Scope": "api1", "ClientId": 3},
            {"Id": 10, "Scope": "api2", "ClientId": 3},
        ],
        "IdentityTokenLifetime": 300,
        "AllowedIdentityTokenSigningAlgorithms": None,
        "AccessTokenLifetime": 3600,
        "AuthorizationCodeLifetime": 300,
        "ConsentLifetime": None,
        "AbsoluteRefreshTokenLifetime": 2592000,
        "SlidingRefreshTokenLifetime": 1296000,
        "RefreshTokenUsage": 1,
        "UpdateAccessTokenClaimsOnRefresh": False,
        "RefreshTokenExpiration": 1,
        "AccessTokenType": 0,
        "EnableLocalLogin": True,
        "IdentityProviderRestrictions": [],
        "IncludeJwtId": False,
        "Claims": [{"Id": 2, "Type": "tenant", "Value": "acme", "ClientId": 3}],
        "AlwaysSendClientClaims": False,
        "ClientClaimsPrefix": "client_",
        "PairWiseSubjectSalt": None,
        "AllowedCorsOrigins": [{"Id": 4, "Origin": "https://app.example", "ClientId": 3}],
        "Properties": [],
        "UserSsoLifetime": None,
        "UserCodeType": None,
        "DeviceCodeLifetime": 300,
        "CibaLifetime": None,
        "PollingInterval": None,
        "CoordinateLifetimeWithUserSession": None,
        "Created": "2024-05-01T10:00:00Z",
        "Updated": None,
        "LastAccessed": "2024-06-01T10:00:00Z",
        "NonEditable": False,
    }


@pytest.fixture(scope="module")
def tb_cert(pki: Pki) -> Issued:
    """A CA-issued certificate, registered by thumbprint."""
    return pki.client("by-thumbprint")


def test_ef_entity_report_lists_only_what_is_lost(client_cert: Issued, tb_cert: Issued) -> None:
    result = import_identityserver([ef_entity(client_cert, tb_cert)])
    (client,) = result.clients
    assert client.to_dict() == {
        "client_id": "m2m.ef",
        "client_name": "EF client",
        "allowed_grant_types": ["client_credentials"],
        "allowed_scopes": ["api1", "api2"],
        "access_token_lifetime": 3600,
        "claims": {"client_tenant": "acme"},
        "secrets": [
            {"type": "X509CertificateName", "value": CLIENT_DN, "description": "dn"},
            {
                "type": "X509CertificateThumbprint",
                "value": tb_cert.thumbprint,  # stored normalised
                "expiration": "2099-01-01T00:00:00+00:00",
            },
        ],
    }
    # Row ids, ClientId foreign keys, Created/LastAccessed and the DPoP options of
    # a client without DPoP describe nothing that is lost: only CORS is.
    assert result.report == [
        "client m2m.ef: AllowedCorsOrigins: ['https://app.example']: not carried over "
        "(CORS is the upstream's concern)"
    ]


def test_bad_thumbprint_names_the_clientsecrets_entry(client_cert: Issued, tb_cert: Issued) -> None:
    entity = ef_entity(client_cert, tb_cert)
    entity["ClientSecrets"].insert(0, {"Type": "SharedSecret", "Value": "hash"})
    entity["ClientSecrets"][2]["Value"] = "B5:31:00"
    result = import_identityserver([entity])
    assert result.clients == []
    (skipped,) = [line for line in result.report if "skipped" in line]
    assert skipped.startswith(
        "client m2m.ef: skipped: ClientSecrets[2].Value: expected a SHA-1 thumbprint"
    )


APPSETTINGS = """{
  // Duende's template: the clients are the IdentityServer:Clients section.
  "Logging": { "LogLevel": { "Default": "Information" } },
  "AllowedHosts": "*",
  "ReverseProxy": { "Clients": [ { "Name": "not an IdentityServer client" } ] },
  "IdentityServer": {
    /* IssuerUri is the old server's; the gateway has its own issuer */
    "IssuerUri": "https://old-identity.example",
    "Clients": [
      {
        "ClientId": "mtls.client",
        "AllowedGrantTypes": [ "client_credentials" ],
        "AllowedScopes": [ "api1" ],
        "ClientSecrets": [ { "Type": "X509Name", "Value": "CN=client, OU=production, O=company" } ],
      },
      {
        "ClientId": "mtls.thumbprint",
        "AllowedGrantTypes": [ "client_credentials" ],
        "AllowedScopes": [ "api1" ],
        "ClientSecrets": [ { "Type": "X509Thumbprint", "Value": "@THUMBPRINT@" } ],
      },
    ],
  },
}
"""


def appsettings(tb_cert: Issued) -> str:
    return APPSETTINGS.replace("@THUMBPRINT@", pasted_thumbprints(tb_cert.thumbprint)["windows"])


def test_appsettings_json_with_comments_and_trailing_commas(tb_cert: Issued) -> None:
    result = import_identityserver(parse_json(appsettings(tb_cert)))
    assert result.section == "IdentityServer:Clients"
    assert [c.client_id for c in result.clients] == ["mtls.client", "mtls.thumbprint"]
    assert result.clients[1].secrets[0].value == tb_cert.thumbprint
    assert result.report == []


@pytest.mark.parametrize(
    ("document", "section"),
    [
        ({"Auth": {"IdentityServer": {"Clients": "@"}}}, "Auth:IdentityServer:Clients"),
        ({"IdentityServer:Clients": "@"}, "IdentityServer:Clients"),  # a flattened key
        ({"identityServer": {"clients": "@"}}, "identityServer:clients"),  # camelCase
        ({"Clients": "@"}, "Clients"),  # the wrapped export
        ({"IdentityServer": {"Clients": {"0": "@0"}}}, "IdentityServer:Clients"),  # .NET array
    ],
)
def test_client_lists_nested_under_other_keys(document: dict[str, Any], section: str) -> None:
    entry = {
        "ClientId": "c",
        "AllowedGrantTypes": ["client_credentials"],
        "ClientSecrets": [{"Type": "X509Name", "Value": "CN=c"}],
    }

    def fill(node: Any) -> Any:
        if node == "@":
            return [entry]
        if node == "@0":
            return entry
        return {k: fill(v) for k, v in node.items()} if isinstance(node, dict) else node

    result = import_identityserver(fill(document))
    assert result.section == section
    assert [c.client_id for c in result.clients] == ["c"]


def test_documents_without_one_client_list_are_refused() -> None:
    with pytest.raises(IdentityServerFormatError, match="IdentityServer:Clients section"):
        import_identityserver({"Logging": {"LogLevel": {}}})
    with pytest.raises(IdentityServerFormatError, match="several client lists"):
        import_identityserver(
            {"A": {"IdentityServer": {"Clients": []}}, "IdentityServer": {"Clients": []}}
        )


async def test_appsettings_import_serves_both_secret_types_over_tls(
    tmp_path: Path, pki: Pki, client_cert: Issued, tb_cert: Issued, make_gateway: MakeGateway
) -> None:
    """appsettings.json → `clients import --format identityserver` → tokens for the DN
    client and for the thumbprint client (both CA-issued)."""
    config, registry = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    source = tmp_path / "appsettings.json"
    source.write_text(appsettings(tb_cert))
    done = run_cli("import", "--format", "identityserver", source, "--config", config)
    assert done.returncode == 0, done.stderr
    assert f"{source}: 2 client(s) converted from IdentityServer:Clients" in done.stderr
    imported = yaml.safe_load(registry.read_text())["clients"]
    gw = await make_gateway(clients=imported)
    for cert, client_id in ((client_cert, "mtls.client"), (tb_cert, "mtls.thumbprint")):
        async with (
            gw.session(cert) as session,
            session.post(
                gw.url + "/connect/token",
                data={"grant_type": "client_credentials", "client_id": client_id},
            ) as r,
        ):
            body = await r.json()
        assert r.status == 200, (client_id, body)
        claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
        assert claims["client_id"] == client_id
