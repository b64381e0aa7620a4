"""gateway.config: the SPEC's config, every problem as ``file:key: message``, env overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.load import GatewayConfig, load_config
from gateway.config.reader import ConfigError
from gateway.config.values import BindAddress, parse_bind
from gateway.devpki import init_dev_pki
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


@pytest.fixture(scope="module")
def spec_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec_example(tmp_path_factory.mktemp("spec") / "conf")


def _problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.problems


def _config_with(spec_config: Path, tmp_path: Path, change: dict[str, Any]) -> Path:
    """The SPEC config with ``change`` merged in at the top level, next to the real files."""
    data = yaml.safe_load(spec_config.read_text())
    data.update(change)
    path = spec_config.parent / f"variant-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


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
    problems = _problems(path)
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
    assert _problems(path) == [
        f"{f}:issuer: required",
        f"{f}:listeners: required: a list of at least one listener",
        f"{f}:registry: required",
        f"{f}:registry.path: required",
        f"{f}:tokens.signing_keys: required: at least one signing key file (mtls-gateway keys generate FILE)",
        f"{f}:routes: required: a list of at least one route",
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"listeners": {"bind": "127.0.0.1:1"}},
            "listeners: required: a list of at least one listener",
        ),
        ({"routes": "everything"}, "routes: required: a list of at least one route"),
        ({"admin": ["127.0.0.1:1"]}, "admin: expected a mapping, got a list"),
        ({"tokens": {"signing_keys": [], "lifetime": 60}}, "tokens.signing_keys: required"),
        (
            {"logging": {"level": "LOUD"}},
            "logging.level: expected one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'",
        ),
        (
            {"headers": {"client_id": "X Client"}},
            "headers.client_id: not a valid header name: 'X Client'",
        ),
        ({"headers": {"subject": "x-client-id"}}, "headers: two identity headers share one name"),
        ({"registry": {"kind": "ldap"}}, "registry.kind: expected one of yaml, redis, got 'ldap'"),
        (
            {"limits": {"upstream_idle_connections": -1}},
            "limits.upstream_idle_connections: expected a whole number >= 0, got -1",
        ),
        (
            {"issuer": "https://x/?a=1"},
            "issuer: URL must not have a query or fragment: 'https://x/?a=1'",
        ),
    ],
)
def test_single_problems(
    spec_config: Path, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = _config_with(spec_config, tmp_path, change)
    (reported,) = _problems(path)
    assert reported.startswith(f"{path}:{problem}")


def test_duplicate_listener_binds(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    path = _config_with(spec_config, tmp_path, {"listeners": data["listeners"] * 2})
    assert _problems(path) == [f"{path}:listeners: two listeners bind the same address"]


def test_pinned_certs_only_is_enough_trust(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    tls = data["listeners"][0]["tls"]
    del tls["client_ca"]
    tls["pinned_certs"] = ["pki/self-signed-client.pem", "pki/gone.pem"]
    path = _config_with(spec_config, tmp_path, {"listeners": data["listeners"]})
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:listeners[0].tls.pinned_certs[1]: file not found: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", BindAddress("127.0.0.1", 8443)),
        ("0.0.0.0:0", BindAddress("0.0.0.0", 0)),
        ("localhost:9901", BindAddress("localhost", 9901)),
        ("gateway-1.internal:443", BindAddress("gateway-1.internal", 443)),
        ("[::1]:8443", BindAddress("::1", 8443)),
        ("::1:8443", BindAddress("::1", 8443)),
    ],
)
def test_good_binds(text: str, expected: BindAddress) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8443", "expected host:port"),
        ("127.0.0.1:", "expected host:port"),
        ("127.0.0.1:http", "expected host:port"),
        ("127.0.0.1:65536", "port out of range"),
        (":8443", "missing host"),
        ("[]:8443", "missing host"),
        ("bad_host:1", "invalid host"),
        ("my host-1:8443", "invalid host"),  # a label with a space and a hyphen
        ("host..example:1", "invalid host"),
        ("host.:1", "invalid host"),
    ],
)
def test_bad_binds(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bind(text)


# --------------------------------------------------------------------------- YAML and files


def test_invalid_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("issuer: https://x\nlisteners:\n\t- bind: 1\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:line 3: invalid YAML: ")
    assert "\\t" in problem or "tab" in problem.lower()

    path.write_text("issuer: https://x\nlisteners: [a, b\nadmin: {}\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:line 3: invalid YAML: ")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _problems(path) == [f"{path}: file not found"]


def test_config_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("- a\n- b\n")
    assert _problems(path) == [f"{path}:<top>: expected a mapping of settings, got a list"]


# --------------------------------------------------------------------------- environment


def test_env_overrides(spec_config: Path) -> None:
    config = load_config(
        spec_config,
        env={
            "MTLS_GATEWAY_REGISTRY__KIND": "redis",
            "MTLS_GATEWAY_REGISTRY__URL": "redis://redis.internal:6380/2",
            "MTLS_GATEWAY_LISTENERS__0__BIND": "0.0.0.0:9443",
            "MTLS_GATEWAY_TOKENS__LIFETIME": "60",
            "MTLS_GATEWAY_LISTENERS__0__TLS__CLIENT_CERTS": "required",
            "MTLS_GATEWAY_ROUTES__0__SCOPES": "[api1, api2]",
            "MTLS_GATEWAY_ROUTES__0__AUTH": "token",
            "OTHER_VARIABLE": "ignored",
        },
    )
    assert config.registry.kind == "redis"
    assert config.registry.url == "redis://redis.internal:6380/2"
    assert config.listeners[0].bind == BindAddress("0.0.0.0", 9443)
    assert config.tokens.lifetime == 60
    assert isinstance(config.tokens.lifetime, int)
    assert config.listeners[0].tls.client_certs == "required"
    assert config.routes[0].scopes == ("api1", "api2")


def test_env_overrides_come_from_the_process_environment(
    spec_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTLS_GATEWAY_ADMIN__BIND", "127.0.0.1:19901")
    assert load_config(spec_config).admin.bind == BindAddress("127.0.0.1", 19901)


def test_env_override_under_an_empty_mapping(spec_config: Path, tmp_path: Path) -> None:
    # "admin:" with its keys commented out is null in YAML.
    path = _config_with(spec_config, tmp_path, {"admin": None})
    config = load_config(path, env={"MTLS_GATEWAY_ADMIN__BIND": "127.0.0.1:19902"})
    assert config.admin.bind == BindAddress("127.0.0.1", 19902)


def test_env_override_problems(spec_config: Path) -> None:
    problems = _problems(
        spec_config,
        env={
            "MTLS_GATEWAY_LISTENERS__3__BIND": "127.0.0.1:1",
            "MTLS_GATEWAY_LISTENERS__FIRST__BIND": "127.0.0.1:1",
            "MTLS_GATEWAY_ISSUER__HOST": "x",
            "MTLS_GATEWAY_TOKENS____LIFETIME": "1",
            "MTLS_GATEWAY_TOKENS__LIFETIME": "soon",
        },
    )
    assert problems == [
        "env:MTLS_GATEWAY_ISSUER__HOST: cannot override inside a string",
        "env:MTLS_GATEWAY_LISTENERS__3__BIND: no list item '3' to override",
        "env:MTLS_GATEWAY_LISTENERS__FIRST__BIND: no list item 'first' to override",
        "env:MTLS_GATEWAY_TOKENS____LIFETIME: malformed variable name",
        f"{spec_config}:tokens.lifetime: expected a positive whole number, got 'soon'",
    ]


def test_an_env_variable_typo_is_reported_as_the_variable(spec_config: Path) -> None:
    problems = _problems(
        spec_config,
        env={"MTLS_GATEWAY_LISTENERS__0__BND": "0.0.0.0:1", "MTLS_GATEWAY_ADMN__BIND": "x:1"},
    )
    assert problems == [
        "env:MTLS_GATEWAY_ADMN__BIND: unknown key admn (expected one of: admin, headers, "
        "issuer, limits, listeners, logging, outbound, registry, routes, tokens)",
        "env:MTLS_GATEWAY_LISTENERS__0__BND: unknown key listeners[0].bnd (expected one of: "
        "bind, forwarded_client_cert, http2, proxy_protocol, public_url, tls)",
    ]


# --------------------------------------------------------------------------- slow-peer limits


def test_slow_peer_limits_have_defaults_and_are_read(spec_config: Path, tmp_path: Path) -> None:
    defaults = load_config(spec_config, env={}).limits
    assert (defaults.send_timeout, defaults.request_body_timeout) == (60.0, 30.0)
    assert defaults.request_body_min_rate == 500.0
    limits = {"send_timeout": 5, "request_body_timeout": 7.5, "request_body_min_rate": 0}
    loaded = load_config(_config_with(spec_config, tmp_path, {"limits": limits}), env={}).limits
    assert (loaded.send_timeout, loaded.request_body_timeout) == (5, 7.5)
    assert loaded.request_body_min_rate == 0  # 0: request_body_timeout is a total


@pytest.mark.parametrize(
    ("key", "value"),
    [("send_timeout", 0), ("request_body_timeout", -1), ("request_body_min_rate", "fast")],
)
def test_a_bad_slow_peer_limit_is_one_line_naming_file_and_key(
    spec_config: Path, tmp_path: Path, key: str, value: object
) -> None:
    path = _config_with(spec_config, tmp_path, {"limits": {key: value}})
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:limits.{key}: ")


# --------------------------------------------------------------------------- HTTP/2 (issue 17)


def test_http2_is_on_by_default_and_upstream_protocol_is_http1(spec_config: Path) -> None:
    config = load_config(spec_config, env={})
    assert all(listener.http2 for listener in config.listeners)
    assert all(route.upstream_protocol == "http1" for route in config.routes)


def test_http2_can_be_turned_off_per_listener(spec_config: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(spec_config.read_text())
    data["listeners"][0]["http2"] = False
    path = _config_with(spec_config, tmp_path, {"listeners": data["listeners"]})
    assert load_config(path, env={}).listeners[0].http2 is False


@pytest.mark.parametrize(
    ("upstream", "protocol"),
    [("http://127.0.0.1:9000", "h2c"), ("https://grpc.internal", "h2"), ("http://x", "http1")],
)
def test_upstream_protocol(spec_config: Path, tmp_path: Path, upstream: str, protocol: str) -> None:
    route = {"prefix": "/grpc", "upstream": upstream, "upstream_protocol": protocol}
    path = _config_with(spec_config, tmp_path, {"routes": [route]})
    assert load_config(path, env={}).routes[0].upstream_protocol == protocol


@pytest.mark.parametrize(
    ("upstream", "protocol", "problem"),
    [
        (
            "https://grpc.internal",
            "h2c",
            "h2c is HTTP/2 in cleartext: use an http:// upstream, or h2",
        ),
        ("http://127.0.0.1:9000", "h2", "h2 is HTTP/2 over TLS: use an https:// upstream, or h2c"),
        ("http://127.0.0.1:9000", "http2", "expected one of http1, h2c, h2, got 'http2'"),
    ],
)
def test_upstream_protocol_problems(
    spec_config: Path, tmp_path: Path, upstream: str, protocol: str, problem: str
) -> None:
    route = {"prefix": "/grpc", "upstream": upstream, "upstream_protocol": protocol}
    path = _config_with(spec_config, tmp_path, {"routes": [route]})
    (reported,) = _problems(path)
    assert reported == f"{path}:routes[0].upstream_protocol: {problem}"
