"""Registered DNs written in the wrong RDN order: warnings for `check` and `clients add`.

Registries hold DNs as IdentityServer (.NET) shows them, most specific RDN
first: ``CN=client, OU=production, O=company``.  ``openssl x509 -subject``
prints the other order (``O=company, OU=production, CN=client``), and a DN
pasted from it is accepted but never matches: RDN order is part of the name
(gateway/trust/dn.py compares RDN sequences).  Two signals, both only warnings:

* an ``issuer`` that names no CA in ``client_ca`` as written, but does when
  reversed: certain;
* a DN that looks least specific first (a C or O first, a CN last): a
  heuristic, since a CA may issue names in an unusual order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cryptography import x509

from gateway.config.load import GatewayConfig
from gateway.registry.model import Client
from gateway.trust.dn import DnKey, ParsedDn, looks_least_specific_first, name_key

# A trust anchor a registered issuer can name: (where it is, its subject key).
CaName = tuple[str, DnKey]


def dn_order_warnings(clients: Iterable[Client], ca_names: Sequence[CaName] = ()) -> list[str]:
    """One line per registered DN that is probably in the reversed RDN order."""
    warnings: list[str] = []
    for client in clients:
        for i, secret in enumerate(client.secrets):
            if secret.dn is not None and looks_least_specific_first(secret.dn):
                warnings.append(_heuristic(client.client_id, f"secrets[{i}]", secret.dn))
        if client.issuer is not None:
            warning = _issuer_warning(client.client_id, client.issuer, ca_names)
            if warning is not None:
                warnings.append(warning)
    return warnings


def _heuristic(client_id: str, where: str, dn: ParsedDn) -> str:
    return (
        f"client {client_id}: {where}: DN '{dn.text}' looks written least specific first "
        f"(openssl's order) and would match no certificate of the usual shape; "
        f"registries use most specific first: '{dn.reversed().text}'"
    )


def _issuer_warning(client_id: str, issuer: ParsedDn, ca_names: Sequence[CaName]) -> str | None:
    if any(key == issuer.key for _, key in ca_names):
        return None  # names a trusted CA as written: whatever its order, it is right
    flipped = issuer.reversed()
    for where, key in ca_names:
        if key == flipped.key:
            return (
                f"client {client_id}: issuer: '{issuer.text}' names no CA in client_ca, "
                f"but reversed it is the subject of {where}: write '{flipped.text}'"
            )
    if looks_least_specific_first(issuer):
        return _heuristic(client_id, "issuer", issuer)
    return None


def client_ca_names(config: GatewayConfig) -> list[CaName]:
    """(file, subject key) of each certificate in the listeners' client_ca files."""
    names: list[CaName] = []
    paths = dict.fromkeys(ls.tls.client_ca for ls in config.listeners)
    for path in paths:
        if path is None:
            continue
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError):
            continue  # an unreadable client_ca is a config error, reported elsewhere
        names += [(str(path), name_key(cert.subject)) for cert in certs]
    return names


def config_dn_order_warnings(config: GatewayConfig, clients: Iterable[Client]) -> list[str]:
    """``dn_order_warnings`` against the CAs the config trusts."""
    return dn_order_warnings(clients, client_ca_names(config))
