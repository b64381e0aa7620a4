"""The Redis key schema (docs/redis.md), and the one serialisation of lookup keys.

Everything lives under ``key_prefix`` in three hashes, so that a whole registry
can be replaced with one atomic RENAME and a cluster keeps it in one slot:

* ``<prefix>clients`` — client_id → the client document (JSON of ``Client.to_dict()``)
* ``<prefix>index``   — index field → the client_ids naming that value, space-separated
  (client_ids never contain white space: ``parse_client`` refuses it)
* ``<prefix>meta``    — ``generation`` (+1 on every write) and ``epoch`` (random, set
  by the first write into an empty Redis: tells a restored or wiped Redis apart)

and one channel, ``<prefix>changes``, carrying ``"<generation> <epoch> <payload>"``.

Index fields are the lookup keys of ``gateway.registry.matching`` written as text,
so the YAML and Redis registries find candidates by the very same keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.registry.matching import LookupKey, identity_lookup_keys, secret_lookup_key
from gateway.registry.model import Client
from gateway.trust.dn import DnKey
from gateway.trust.identity import CertificateIdentity

_FIELD_PREFIX = {
    "X509CertificateThumbprint": "tp",
    "dn": "dn",
    "X509SanDns": "dns",
    "X509SanUri": "uri",
    "X509SanIp": "ip",
    "X509SanEmail": "email",
    "SpiffePrefix": "spiffe-prefix",  # wildcard SPIFFE secrets: spiffe://td/ns/prod/
}


def dn_digest(key: DnKey) -> str:
    """SHA-256 of a canonical JSON form of a parsed DN: short, fixed-size index fields.

    RDNs keep their order (ASN.1, least specific first); the attributes of a
    multi-valued RDN are a set, so they are sorted.
    """
    canonical = json.dumps(
        [sorted([oid, value] for oid, value in rdn) for rdn in key],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def field_of(key: LookupKey) -> str:
    kind, value = key
    if kind == "dn":
        assert isinstance(value, tuple)
        return f"dn:{dn_digest(value)}"
    return f"{_FIELD_PREFIX[kind]}:{value}"


def identity_fields(identity: CertificateIdentity) -> list[str]:
    """The index fields a certificate can be found under, without duplicates."""
    return list(dict.fromkeys(field_of(key) for key in identity_lookup_keys(identity)))


def client_fields(client: Client) -> list[str]:
    return list(dict.fromkeys(field_of(secret_lookup_key(s)) for s in client.secrets))


@dataclass(frozen=True, slots=True)
class KeySchema:
    prefix: str

    @property
    def clients(self) -> str:
        return f"{self.prefix}clients"

    @property
    def index(self) -> str:
        return f"{self.prefix}index"

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta"

    @property
    def channel(self) -> str:
        return f"{self.prefix}changes"

    def staging(self, token: str) -> tuple[str, str]:
        """Where ``replace_all`` builds the next registry before swapping it in."""
        return f"{self.prefix}staging:{token}:clients", f"{self.prefix}staging:{token}:index"


@dataclass(frozen=True, slots=True)
class Change:
    """One invalidation message."""

    generation: int
    epoch: str
    everything: bool
    client_ids: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


ALL = "*"


def change_payload(client_ids: Iterable[str], fields: Iterable[str]) -> str:
    return json.dumps(
        {"ids": sorted(set(client_ids)), "fields": sorted(set(fields))},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def parse_change(data: str) -> Change | None:
    """None for a message this version cannot read (the caller then drops everything)."""
    try:
        generation_text, epoch, payload = data.split(" ", 2)
        generation = int(generation_text)
        if payload == ALL:
            return Change(generation, epoch, True)
        body = json.loads(payload)
        ids = tuple(str(i) for i in body["ids"])
        fields = tuple(str(f) for f in body["fields"])
    except (ValueError, KeyError, TypeError):
        return None
    return Change(generation, epoch, False, ids, fields)
