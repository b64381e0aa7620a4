"""The SPEC's example config and registry, written next to real files, and helpers to vary it.

Config tests across the tree load this example (the ``spec_config`` fixture in
tests/conftest.py) and change one section at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli.devpki import init_dev_pki
from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.oauth.keys import generate_signing_key

# SPEC.md "Configuration", verbatim: this file must work as it stands.
SPEC_CONFIG = """\
issuer: https://localhost:8443
listeners:
  - bind: 127.0.0.1:8443
    public_url: https://localhost:8443
    tls:
      cert: pki/server.pem
      key: pki/server.key
      client_ca: pki/ca.pem          # trust anchors for PKI clients
      client_certs: optional         # optional | required
      crl: null                      # PEM/DER CRL file, reloaded on change
admin:
  bind: 127.0.0.1:9901               # plain HTTP: /healthz /readyz /metrics
registry:
  kind: yaml                         # yaml | redis
  path: clients.yaml                 # kind: yaml
  url: redis://127.0.0.1:6379/0      # kind: redis
tokens:
  signing_keys: [keys/signing.pem]   # first one signs; all are published
  lifetime: 3600
routes:                              # longest prefix wins
  - prefix: /
    upstream: http://127.0.0.1:8080
    auth: client                     # client | token | none
"""

# SPEC.md "Registry format", verbatim.
SPEC_REGISTRY = """\
clients:
  - client_id: mtls.client
    allowed_grant_types: [client_credentials]
    allowed_scopes: [api1]
    secrets:
      - type: X509CertificateName          # PKI: chain must verify against client_ca
        value: "CN=client, OU=production, O=company"
        description: client.dn
      - type: X509CertificateThumbprint    # self-issued: SHA-1 of the DER, hex, any case
        value: bca0d040847f843c5ee0fa6eb494837470155868
        description: mtls.tb
"""


def write_spec_example(directory: Path) -> Path:
    """The SPEC config and registry in ``directory``, with real files behind them."""
    directory.mkdir(parents=True, exist_ok=True)
    init_dev_pki(directory / "pki")
    (directory / "keys").mkdir(mode=0o700)
    generate_signing_key(directory / "keys" / "signing.pem", "ES256")
    (directory / "clients.yaml").write_text(SPEC_REGISTRY)
    config = directory / "gateway.yaml"
    config.write_text(SPEC_CONFIG)
    return config


def config_problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The problems ``load_config`` reports for ``path``; it must report some."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.problems


def config_with(spec_config: Path, tmp_path: Path, change: dict[str, Any]) -> Path:
    """The SPEC config with ``change`` merged in at the top level, next to the real files."""
    data = yaml.safe_load(spec_config.read_text())
    data.update(change)
    path = spec_config.parent / f"variant-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
