"""The documented examples work verbatim: config/gateway.example.yaml and clients.example.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.cli.devpki import init_dev_pki
from gateway.config.load import load_config
from gateway.oauth.keys import generate_signing_key
from gateway.registry.yaml_file import load_registry_file
from gateway.runtime import assemble

ROOT = Path(__file__).resolve().parent.parent


def test_gateway_example_loads_verbatim_in_a_quickstart_layout(tmp_path: Path) -> None:
    init_dev_pki(tmp_path / "pki")
    (tmp_path / "keys").mkdir()
    generate_signing_key(tmp_path / "keys" / "signing.pem")
    shutil.copy(ROOT / "config" / "clients.example.yaml", tmp_path / "clients.yaml")
    shutil.copy(ROOT / "config" / "gateway.example.yaml", tmp_path / "gateway.yaml")

    config = load_config(tmp_path / "gateway.yaml", env={})
    gateway = assemble(config)

    assert config.listeners[0].tls.client_ca == tmp_path / "pki" / "ca.pem"
    assert config.registry.kind == "yaml"
    assert gateway.listeners[0].tls.trust.ca_certificates  # the dev CA is the one anchor
    assert not gateway.listeners[0].tls.material.ignored_pins  # no deprecated keys in use


def test_clients_example_parses() -> None:
    clients = load_registry_file(ROOT / "config" / "clients.example.yaml")
    kinds = {s.type for c in clients for s in c.secrets}
    assert kinds == {
        "X509CertificateName",
        "X509CertificateThumbprint",
        "X509SanDns",
        "X509SanUri",
        "X509SanIp",
        "X509SanEmail",
    }
