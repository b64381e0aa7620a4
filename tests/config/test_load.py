"""gateway/config/load.py: the SPEC's config, every problem as ``file:key: message``, YAML and files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config.load import GatewayConfig, load_config
from gateway.config.values import BindAddress
from tests.spec_example import config_problems, config_with

# --------------------------------------------------------------------------- the SPEC example


def test_spec_example_loads_with_paths_relative_to_the_file(
    spec_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # somewhere else: paths must not depend on the cwd
    config = load_config(spec_config, env={})
    base = spec_config.parent.resolve()

    assert isinstance(config, GatewayConfig)
    assert config.issuer == "https://localhost:8443"
    (listener,) = config.listeners
    assert listener.bind == BindAddress("127.0.0.1", 8443)
    assert listener.public_url == "https://localhost:8443"
    assert listener.tls.cert == base / "pki" / "server.pem"
    assert listener.tls.key == base / "pki" / "server.key"
    assert listener.tls.client_ca == base / "pki" / "ca.pem"
    assert listener.tls.client_certs == "optional"
    assert listener.tls.crl is None
    assert listener.tls.pinned_certs == ()
    assert config.admin.bind == BindAddress("127.0.0.1", 9901)
    assert config.registry.kind == "yaml"
    assert config.registry.path == base / "clients.yaml"
    assert config.registry.url is None  # only read for kind: redis
    assert config.tokens.signing_keys == (base / "keys" / "signing.pem",)
    assert config.tokens.lifetime == 3600
    (route,) = config.routes
    assert (route.prefix, route.upstream, route.auth) == ("/", "http://127.0.0.1:8080", "client")


def test_absolute_paths_are_kept(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    absolute = (spec_config.parent / "pki" / "server.pem").resolve()
    data["listeners"][0]["tls"]["cert"] = str(absolute)
    elsewhere = tmp_path / "gateway.yaml"  # the other files are not next to this one
    data["listeners"][0]["tls"]["key"] = str(spec_config.parent / "pki" / "server.key")
    data["listeners"][0]["tls"]["client_ca"] = str(spec_config.parent / "pki" / "ca.pem")
    data["registry"]["path"] = str(spec_config.parent / "clients.yaml")
    data["tokens"]["signing_keys"] = [str(spec_config.parent / "keys" / "signing.pem")]
    elsewhere.write_text(yaml.safe_dump(data))
    assert load_config(elsewhere, env={}).listeners[0].tls.cert == absolute


def test_relative_paths_do_not_follow_the_cwd(
    spec_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From inside the config directory, a relative path *to the config* works
    # and the files are still found relative to it.
    monkeypatch.chdir(spec_config.parent.parent)
    config = load_config(Path(spec_config.parent.name) / spec_config.name, env={})
    assert config.listeners[0].tls.cert == spec_config.parent.resolve() / "pki" / "server.pem"


# --------------------------------------------------------------------------- problems


def test_every_problem_is_reported_at_once(spec_config: Path, tmp_path: Path) -> None:
    path = spec_config.parent / "broken.yaml"
    path.write_text(
        """\
issuer: http://localhost:8443
colour: blue
listeners:
  - bind: 127.0.0.1
    tls:
      cert: pki/missing.pem
      key: pki/server.key
      client_certs: sometimes
      verify: true
  - bind: 127.0.0.1:99999
    tls:
      cert: pki/server.pem
      key: pki/server.key
      client_ca: pki/ca.pem
admin:
  bind: my host:9901
registry:
  kind: yaml
tokens:
  signing_keys: [keys/signing.pem, keys/nope.pem]
  lifetime: one hour
routes:
  - prefix: /
    upstream: http://127.0.0.1:8080
    scopes: [api1]
  - prefix: /
    upstream: ftp://127.0.0.1
    auth: token
    strip_prefix: "yes"
  - prefix: api
    upstream: http://127.0.0.1:8081
limits:
  max_headers: true
"""
    )
    problems = config_problems(path)
    f = str(path)
    assert sorted(problems) == sorted(
        [
            f"{f}:colour: unknown key (expected one of: admin, headers, issuer, limits, listeners, logging, outbound, registry, routes, tokens)",
            f"{f}:issuer: expected a https URL, got 'http://localhost:8443'",
            f"{f}:listeners[0].bind: expected host:port, got '127.0.0.1'",
            f"{f}:listeners[0].tls.verify: unknown key (expected one of: cert, client_ca, client_certs, crl, key, min_version, pinned_certs, spiffe_bundles, untrusted_certificates)",
            f"{f}:listeners[0].tls.cert: file not found: {spec_config.parent.resolve()}/pki/missing.pem",
            f"{f}:listeners[0].tls.client_certs: expected one of optional, required, got 'sometimes'",
            f"{f}:listeners[1].bind: port out of range in '127.0.0.1:99999'",
            f"{f}:admin.bind: invalid host in 'my host:9901'",
            f"{f}:registry.path: required",
            f"{f}:tokens.signing_keys[1]: file not found: {spec_config.parent.resolve()}/keys/nope.pem",
            f"{f}:tokens.lifetime: expected a positive whole number, got 'one hour'",
            f"{f}:routes[0].scopes: scopes apply only to auth: token routes",
            f"{f}:routes[1].upstream: expected a http or https URL, got 'ftp://127.0.0.1'",
            f"{f}:routes[1].strip_prefix: expected true or false, got 'yes'",
            f"{f}:routes[2].prefix: must start with '/'",
            f"{f}:routes: duplicate route prefix: /",
            f"{f}:limits.max_headers: expected a positive whole number, got True",
        ]
    )
    line = re.compile(rf"^{re.escape(f)}:[\w.\[\]<>]+: \S")
    assert all(line.match(p) for p in problems), problems


def test_missing_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("{}\n")
    f = str(path)
    assert config_problems(path) == [
        f"{f}:issuer: required",
        f"{f}:listeners: required: a list of at least one listener",
        f"{f}:registry: required",
        f"{f}:registry.path: required",
        f"{f}:tokens.signing_keys: required: at least one signing key file (mtls-gateway keys generate FILE)",
        f"{f}:routes: required: a list of at least one route",
    ]


def test_a_bad_issuer_is_one_line(spec_config: Path, tmp_path: Path) -> None:
    path = config_with(spec_config, tmp_path, {"issuer": "https://x/?a=1"})
    assert config_problems(path) == [
        f"{path}:issuer: URL must not have a query or fragment: 'https://x/?a=1'"
    ]


# --------------------------------------------------------------------------- YAML and files


def test_invalid_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("issuer: https://x\nlisteners:\n\t- bind: 1\n")
    (problem,) = config_problems(path)
    assert problem.startswith(f"{path}:line 3: invalid YAML: ")
    assert "\\t" in problem or "tab" in problem.lower()

    path.write_text("issuer: https://x\nlisteners: [a, b\nadmin: {}\n")
    (problem,) = config_problems(path)
    assert problem.startswith(f"{path}:line 3: invalid YAML: ")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert config_problems(path) == [f"{path}: file not found"]


def test_config_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("- a\n- b\n")
    assert config_problems(path) == [f"{path}:<top>: expected a mapping of settings, got a list"]


# --------------------------------------------------------------------------- layering


def test_loading_the_config_imports_no_runtime_module() -> None:
    # Each package's config.py is data and parsing: loading the config must not
    # pull in the connection layers, the proxy or the registries, which import
    # these types back (a cycle the moment one of them is imported first).
    probe = (
        "import sys, gateway.config.load\n"
        "for name, module in sorted(sys.modules.items()):\n"
        "    if name.startswith('gateway.') and not hasattr(module, '__path__'):\n"
        "        print(name)\n"
    )
    modules = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    pure = {"gateway.route_rules", "gateway.oauth.paths"}  # route prefix rules, for routes:
    assert "gateway.listener.config" in modules
    assert [
        m for m in modules if not (m.startswith("gateway.config.") or m.endswith(".config"))
    ] == sorted(pure)
