"""IdentityServer client exports → registry clients, and everything that did not carry over.

Reads what ``JsonSerializer.Serialize(clients)`` of IdentityServer4 / Duende
``Client`` objects gives (PascalCase), the camelCase of ASP.NET's web
defaults, and the EF entity shape (``ClientSecrets: [{Id, Type, Value,
Created, ClientId}]``, ``AllowedGrantTypes: [{GrantType}]``, ``AllowedScopes:
[{Scope}]``, ...): a JSON array, an object with ``Clients``, or an
``appsettings.json`` with an ``IdentityServer:Clients`` section
(identityserver_document.py finds the list).

The registry model mirrors IdentityServer's (registry/model.py), so most
fields map one to one.  What cannot — shared secrets, interactive grants,
redirect URIs, refresh-token and PKCE settings, reference tokens, ... — is
reported per client, never dropped silently; a property left at
IdentityServer's default carries nothing and is not reported, nor is store
bookkeeping (row ids, foreign keys, timestamps), which describes the database
and not the client.  A client left
without a certificate secret or without ``client_credentials`` is skipped,
and reported.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.registry.identityserver_document import DocumentError, locate_clients
from gateway.registry.model import RESERVED_CLAIMS, Client, ClientError, parse_client
from gateway.trust.identity import sha1_thumbprint

# IdentityServerConstants.SecretTypes → registry secret types.
_SECRET_TYPES: Final = {
    "x509thumbprint": "X509CertificateThumbprint",
    "x509certificatethumbprint": "X509CertificateThumbprint",
    "x509name": "X509CertificateName",
    "x509certificatename": "X509CertificateName",
    # This gateway's own SAN types, should an export already use them.
    "x509sandns": "X509SanDns",
    "x509sanuri": "X509SanUri",
    "x509sanip": "X509SanIp",
    "x509sanemail": "X509SanEmail",
}
_UNSUPPORTED_SECRETS: Final = {
    "sharedsecret": "shared secrets are not accepted: clients authenticate with a certificate",
    "jwk": "private_key_jwt is not supported: clients authenticate with a certificate",
}

# Client properties at IdentityServer's defaults (Duende Client.cs): nothing to carry over.
_DEFAULTS: Final[Mapping[str, Any]] = {
    "protocoltype": "oidc",
    "requireclientsecret": True,
    "requireconsent": False,
    "allowrememberconsent": True,
    "alwaysincludeuserclaimsinidtoken": False,
    "requirepkce": True,
    "allowplaintextpkce": False,
    "requirerequestobject": False,
    "allowaccesstokensviabrowser": False,
    "requiredpop": False,
    "frontchannellogoutsessionrequired": True,
    "backchannellogoutsessionrequired": True,
    "allowofflineaccess": False,
    "identitytokenlifetime": 300,
    "authorizationcodelifetime": 300,
    "absoluterefreshtokenlifetime": 2592000,
    "slidingrefreshtokenlifetime": 1296000,
    "refreshtokenusage": {1, "OneTimeOnly"},
    "updateaccesstokenclaimsonrefresh": False,
    "refreshtokenexpiration": {1, "Absolute"},
    "accesstokentype": {0, "Jwt"},
    "enablelocallogin": True,
    "alwayssendclientclaims": False,
    "clientclaimsprefix": "client_",
    "devicecodelifetime": 300,
    "requirepushedauthorization": False,
    "pushedauthorizationlifetime": None,
    "coordinatelifetimewithusersession": False,
    # RFC 9068 §2.2 makes jti REQUIRED, so every token here has one: the EF
    # entity's default (false) and the model's (true) both carry nothing.
    "includejwtid": {True, False},
}
# Settings that only mean something when another is on (Duende: DPoP options).
_ONLY_WITH: Final[Mapping[str, str]] = {
    "dpopvalidationmode": "requiredpop",
    "dpopclockskew": "requiredpop",
}
_REASONS: Final[Mapping[str, str]] = {
    "redirecturis": "redirect-based flows are not served (client_credentials only)",
    "postlogoutredirecturis": "there is no login or logout here",
    "frontchannellogouturi": "there is no login or logout here",
    "backchannellogouturi": "there is no login or logout here",
    "allowedcorsorigins": "CORS is the upstream's concern",
    "requirepkce": "PKCE applies to authorization_code only",
    "allowofflineaccess": "refresh tokens are not issued",
    "refreshtokenusage": "refresh tokens are not issued",
    "refreshtokenexpiration": "refresh tokens are not issued",
    "absoluterefreshtokenlifetime": "refresh tokens are not issued",
    "slidingrefreshtokenlifetime": "refresh tokens are not issued",
    "requireclientsecret": "clients authenticate with a certificate",
    "accesstokentype": "only JWT access tokens are issued (no reference tokens)",
    "requiredpop": "DPoP is not supported; tokens are certificate-bound (RFC 8705)",
    "identitytokenlifetime": "no identity tokens are issued",
    "allowedidentitytokensigningalgorithms": "no identity tokens are issued",
    "properties": "custom properties have no equivalent",
}
# Store bookkeeping: EF row ids, timestamps, the foreign key and navigation
# property back to the client, on the client and on each child row.
_METADATA: Final = frozenset(
    {"id", "created", "updated", "lastaccessed", "noneditable", "clientid", "client"}
)
_MAPPED: Final = frozenset(
    {
        "clientid",
        "clientname",
        "description",
        "enabled",
        "allowedgranttypes",
        "allowedscopes",
        "clientsecrets",
        "accesstokenlifetime",
        "claims",
        "clientclaimsprefix",
    }
)


class IdentityServerFormatError(ValueError):
    """The document is not an IdentityServer client export at all."""


@dataclass(slots=True)
class ImportResult:
    clients: list[Client] = field(default_factory=list)
    # One line per thing not carried over (and per skipped client): "client X: ...".
    report: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    section: str = ""  # where the client list was, e.g. IdentityServer:Clients


def _folded(entry: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Keys compared case-insensitively: PascalCase and camelCase exports alike."""
    return {str(key).lower(): (str(key), value) for key, value in entry.items()}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _at_default(key: str, value: Any) -> bool:
    if key not in _DEFAULTS:
        return False
    default = _DEFAULTS[key]
    return value in default if isinstance(default, set) else value == default


def _strings(value: Any, item_key: str, where: str, notes: list[str]) -> list[str]:
    """A list of strings, or the EF entity shape ``[{item_key: "..."}]``."""
    if _empty(value):
        return []
    if not isinstance(value, list):
        notes.append(f"{where}: expected a list, not carried over")
        return []
    result: list[str] = []
    for item in value:
        if isinstance(item, Mapping):
            item = _folded(item).get(item_key.lower(), ("", None))[1]
        if isinstance(item, str) and item:
            result.append(item)
        else:
            notes.append(f"{where}: entry {item!r} is not a name, not carried over")
    return result


def _secret(raw: Any, index: int, notes: list[str]) -> dict[str, Any] | None:
    where = f"ClientSecrets[{index}]"
    if not isinstance(raw, Mapping):
        notes.append(f"{where}: not an object, not carried over")
        return None
    fields = _folded(raw)
    kind = str(fields.get("type", ("", ""))[1] or "SharedSecret")
    value = fields.get("value", ("", None))[1]
    description = fields.get("description", ("", None))[1]
    label = f"{where} ({kind}{', ' + str(description) if description else ''})"
    lowered = kind.lower()
    if lowered in _UNSUPPORTED_SECRETS:
        # The value (a hash or a key) is never echoed into the report.
        notes.append(f"{label}: {_UNSUPPORTED_SECRETS[lowered]}")
        return None
    if not isinstance(value, str) or not value.strip():
        notes.append(f"{label}: no value, not carried over")
        return None
    if lowered == "x509certificatebase64":
        try:
            der = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            notes.append(f"{label}: not base64, not carried over")
            return None
        kind, value = "X509CertificateThumbprint", sha1_thumbprint(der)
        notes.append(f"{label}: carried over as X509CertificateThumbprint {value}")
    elif lowered in _SECRET_TYPES:
        kind = _SECRET_TYPES[lowered]
    else:
        notes.append(f"{label}: unknown secret type, not carried over")
        return None
    secret: dict[str, Any] = {"type": kind, "value": value.strip()}
    if description:
        secret["description"] = str(description)
    expiration = fields.get("expiration", ("", None))[1]
    if expiration:
        secret["expiration"] = str(expiration)
    for key, (original, extra) in fields.items():
        if key in ("type", "value", "description", "expiration") or key in _METADATA:
            continue
        if not _empty(extra):
            notes.append(f"{where}.{original}: no equivalent, not carried over")
    return secret


def _claims(raw: Any, prefix: str, notes: list[str]) -> dict[str, Any]:
    """IdentityServer puts client claims in tokens as ``<ClientClaimsPrefix><Type>``."""
    claims: dict[str, Any] = {}
    if _empty(raw):
        return claims
    if not isinstance(raw, list):
        notes.append("Claims: expected a list of {Type, Value}, not carried over")
        return claims
    for i, item in enumerate(raw):
        fields = _folded(item) if isinstance(item, Mapping) else {}
        kind = fields.get("type", ("", None))[1]
        value = fields.get("value", ("", None))[1]
        if not isinstance(kind, str) or not kind or value is None:
            notes.append(f"Claims[{i}]: needs Type and Value, not carried over")
            continue
        name = prefix + kind
        if name in RESERVED_CLAIMS:
            notes.append(f"Claims[{i}] ({name}): set by the token service, not carried over")
            continue
        if name in claims:  # repeated types become an array, as in IdentityServer's tokens
            previous = claims[name]
            claims[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            claims[name] = value
    return claims


def _convert(
    entry: Mapping[str, Any], notes: list[str], origins: list[int]
) -> tuple[dict[str, Any], list[str]]:
    """The registry form of one client, and why it must be skipped (empty: keep it).

    ``origins[i]`` is the ``ClientSecrets`` index that registry secret ``i`` came from.
    """
    fields = _folded(entry)

    def get(key: str) -> Any:
        return fields.get(key, ("", None))[1]

    data: dict[str, Any] = {"client_id": get("clientid")}
    skip: list[str] = []
    for key, target in (("clientname", "client_name"), ("description", "description")):
        if not _empty(get(key)):
            data[target] = str(get(key))
    if get("enabled") is not None:
        data["enabled"] = get("enabled")

    grants = _strings(get("allowedgranttypes"), "GrantType", "AllowedGrantTypes", notes)
    for grant in grants:
        if grant != "client_credentials":
            notes.append(f"AllowedGrantTypes: {grant}: not supported (client_credentials only)")
    if "client_credentials" not in grants:
        skip.append("no client_credentials grant")
    data["allowed_grant_types"] = ["client_credentials"]
    data["allowed_scopes"] = _strings(get("allowedscopes"), "Scope", "AllowedScopes", notes)

    secrets = []
    raw_secrets = get("clientsecrets")
    for i, raw in enumerate(raw_secrets if isinstance(raw_secrets, list) else []):
        secret = _secret(raw, i, notes)
        if secret is not None:
            secrets.append(secret)
            origins.append(i)
    if not secrets:
        skip.append("no certificate secret")
    data["secrets"] = secrets

    lifetime = get("accesstokenlifetime")
    if lifetime is not None:
        data["access_token_lifetime"] = lifetime
    prefix = get("clientclaimsprefix")
    claims = _claims(get("claims"), "client_" if prefix is None else str(prefix), notes)
    if claims:
        data["claims"] = claims

    for key, (original, value) in fields.items():
        if key in _MAPPED or key in _METADATA or _empty(value) or _at_default(key, value):
            continue
        if key in _ONLY_WITH and get(_ONLY_WITH[key]) is not True:
            continue
        reason = _REASONS.get(key, "no equivalent in mtls-gateway")
        notes.append(f"{original}: {_show(value)}: not carried over ({reason})")
    return data, skip


def _show(value: Any) -> str:
    """A setting's value for the report; EF child rows without their bookkeeping."""
    if isinstance(value, list):
        value = [
            {k: v for k, v in item.items() if str(k).lower() not in _METADATA}
            if isinstance(item, Mapping)
            else item
            for item in value
        ]
        value = [
            next(iter(v.values())) if isinstance(v, dict) and len(v) == 1 else v for v in value
        ]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _secret_problem(problem: str, origins: list[int]) -> str:
    """``secrets[1].value: …`` → ``ClientSecrets[2].Value: …``: the key in the user's file."""
    match = re.match(r"secrets\[(\d+)\](?:\.(\w+))?", problem)
    if match is None or int(match[1]) >= len(origins):
        return problem
    key = f".{match[2].capitalize()}" if match[2] else ""
    return f"ClientSecrets[{origins[int(match[1])]}]{key}{problem[match.end() :]}"


def import_identityserver(document: Any) -> ImportResult:
    """Convert an export; raises IdentityServerFormatError if it is not one."""
    try:
        entries, section = locate_clients(document)
    except DocumentError as exc:
        raise IdentityServerFormatError(str(exc)) from None
    result = ImportResult(section=section)
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            result.report.append(f"clients[{i}]: not an object, skipped")
            result.skipped.append(f"clients[{i}]")
            continue
        notes: list[str] = []
        origins: list[int] = []
        data, skip = _convert(entry, notes, origins)
        client_id = data.get("client_id")
        label = (
            f"client {client_id}" if isinstance(client_id, str) and client_id else f"clients[{i}]"
        )
        if not isinstance(client_id, str) or not client_id:
            skip.append("no ClientId")
        elif client_id in seen:
            skip.append("duplicate ClientId")
        client: Client | None = None
        if not skip:
            try:
                client = parse_client(data)
            except ClientError as exc:
                skip += [_secret_problem(p, origins) for p in exc.problems]
        result.report += [f"{label}: {note}" for note in notes]
        if client is None:
            result.report.append(f"{label}: skipped: {'; '.join(skip)}")
            result.skipped.append(label)
            continue
        seen.add(client.client_id)
        result.clients.append(client)
    return result
