"""Property-based tests: every input either works or raises the one documented error.

Existing ones, kept where they are: DN parse/format round trips and arbitrary
DN text (tests/trust/test_dn.py), arbitrary form bodies (tests/oauth/test_forms.py),
PROXY protocol headers (tests/listener/test_proxy_protocol.py).
"""

from __future__ import annotations

import math
import string
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.load import GatewayConfig, load_config
from gateway.config.reader import ConfigError
from gateway.headers import (
    HOP_BY_HOP,
    downstream_response_fields,
    header_key,
    managed_header_keys,
    upstream_request_headers,
)
from gateway.oauth.errors import OAuthError
from gateway.oauth.forms import MAX_FIELDS, parse_form
from gateway.proxy.config import HeaderNames
from gateway.registry.model import (
    CLIENT_KEYS,
    SECRET_TYPES,
    Client,
    ClientError,
    parse_client,
)
from gateway.registry.yaml_file import parse_registry_document
from gateway.trust.forwarded import ForwardedCertError, header_values, parse_forwarded
from gateway.trust.identity import CertificateError, identity_from_der
from tests.conftest import write_config
from tests.pki import Pki

MANAGED = managed_header_keys(HeaderNames())
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


# --- header stripping ---------------------------------------------------------------


@st.composite
def spelling_of(draw: st.DrawFn, key: str) -> str:
    """``key`` with each letter in either case and each "-" as "-" or "_"."""
    out = []
    for ch in key:
        if ch == "-":
            out.append(draw(st.sampled_from("-_")))
        elif ch.isalpha():
            out.append(draw(st.sampled_from((ch.lower(), ch.upper()))))
        else:
            out.append(ch)
    return "".join(out)


managed_spellings = st.sampled_from(sorted(MANAGED)).flatmap(spelling_of)
unrelated_names = st.text(TCHAR, min_size=1, max_size=30).filter(
    lambda n: header_key(n) not in MANAGED and header_key(n) not in HOP_BY_HOP
)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(max_examples=150)
@given(
    spoofed=st.lists(st.tuples(managed_spellings, values), min_size=1, max_size=20),
    kept=st.lists(st.tuples(unrelated_names, values), max_size=20),
    connection=st.lists(st.one_of(managed_spellings, unrelated_names), max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_managed_names_in_any_spelling_are_removed_and_others_kept(
    spoofed: list[tuple[str, str]],
    kept: list[tuple[str, str]],
    connection: list[str],
    order: Any,
) -> None:
    fields = [*spoofed, *kept]
    order.shuffle(fields)
    incoming: CIMultiDict[str] = CIMultiDict(fields)
    if connection:
        incoming.add("Connection", ", ".join(connection))
    injected = (("X-Client-Id", "the-gateways-own"),)
    out = upstream_request_headers(
        CIMultiDictProxy(incoming),
        managed=MANAGED,
        injected=injected,
        host="upstream:80",
        keep=(("X-Forwarded-For", "127.0.0.1"),),
    )
    listed = {header_key(c) for c in connection}
    # No caller-sent managed field survives, whatever Connection says.
    managed_out = [(k, v) for k, v in out.items() if header_key(k) in MANAGED]
    assert sorted(managed_out) == sorted(
        [("X-Client-Id", "the-gateways-own"), ("X-Forwarded-For", "127.0.0.1")]
    )
    # Every other field is kept, repeats and order included, unless Connection names it.
    expected = [(k, v) for k, v in fields if (k, v) in kept and header_key(k) not in listed]
    relayed = [(k, v) for k, v in out.items() if header_key(k) not in MANAGED and k != "Host"]
    assert relayed == expected


@settings(max_examples=200)
@given(
    hop=st.sampled_from(sorted(HOP_BY_HOP - {"host", "content-length"})).flatmap(spelling_of),
    kept=st.lists(st.tuples(unrelated_names, values), max_size=10),
)
def test_hop_by_hop_response_fields_are_dropped_in_any_spelling(
    hop: str, kept: list[tuple[str, str]]
) -> None:
    upstream = [(k.encode(), v.encode()) for k, v in [*kept, (hop, "x")]]
    out, _, _ = downstream_response_fields(upstream)
    assert all(header_key(k) != header_key(hop) for k, _ in out)
    # `Connection: x` also makes a field named X hop-by-hop (RFC 9110 §7.6.1).
    named = {"x"} if header_key(hop) == "connection" else set()
    assert out == [(k, v) for k, v in kept if header_key(k) not in named]


# --- form parsing -------------------------------------------------------------------

form_names = st.text(min_size=1, max_size=20)
form_values = st.text(max_size=40)


@given(st.dictionaries(form_names, form_values, max_size=MAX_FIELDS))
def test_a_form_of_distinct_names_round_trips(form: dict[str, str]) -> None:
    body = urlencode(form).encode()
    assert parse_form(body) == {k: v for k, v in form.items() if v}


@given(st.lists(st.tuples(form_names, form_values), min_size=1, max_size=10), st.data())
def test_a_repeated_name_is_always_invalid_request(
    pairs: list[tuple[str, str]], data: st.DataObject
) -> None:
    name, value = data.draw(st.sampled_from(pairs))
    body = urlencode([*pairs, (name, value)]).encode()
    with pytest.raises(OAuthError) as exc:
        parse_form(body)
    assert exc.value.error == "invalid_request"


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["=", "&", "%", "%2", "%zz", "%ff", "%c0%ae", "+", ";", "\x00"]),
            st.text(max_size=5),
        ),
        max_size=40,
    )
)
def test_percent_and_separator_soup_raises_only_oauth_errors(parts: list[str]) -> None:
    body = "".join(parts).encode("utf-8", "surrogatepass")
    try:
        form = parse_form(body)
    except OAuthError as exc:
        assert exc.error == "invalid_request"
        return
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in form.items())


# --- registry clients ---------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "CN=client, OU=production, O=company",
            "bca0d040847f843c5ee0fa6eb494837470155868",
            "spiffe://example.org/ns/prod",
            "::1",
            "a@b.c",
            "client_credentials",
            "2030-01-01T00:00:00Z",
            "CN=",
            '"',
            "+",
        ]
    ),
)
yamlish: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)
secret_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(SECRET_TYPES), yamlish),
        "value": yamlish,
        "description": yamlish,
        "expiration": yamlish,
    },
)
client_like = st.fixed_dictionaries(
    {},
    optional={
        **{key: yamlish for key in CLIENT_KEYS},
        "secrets": st.one_of(st.lists(secret_like, max_size=3), yamlish),
        "unknown": yamlish,
    },
)


@settings(max_examples=120)
@given(st.one_of(client_like, yamlish))
@example(
    {"client_id": "x", "secrets": [{"type": "X509CertificateName", "value": "CN=" + "\\" * 3}]}
)
@example({"client_id": "x", "secrets": [{"type": "X509SanIp", "value": "1" * 100}]})
@example(
    {
        "client_id": "x",
        "secrets": [{"type": "X509CertificateThumbprint", "value": "ab" * 20}],
        "expiration": 10**400,
    }
)
def test_parse_client_raises_only_client_error(data: Any) -> None:
    try:
        client = parse_client(data)
    except ClientError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return
    assert isinstance(client, Client)
    assert client.secrets


@settings(max_examples=60)
@given(st.one_of(yamlish, st.fixed_dictionaries({"clients": st.lists(client_like, max_size=3)})))
def test_registry_documents_raise_only_config_error(data: Any) -> None:
    try:
        parse_registry_document(data, "clients.yaml")
    except ConfigError as exc:
        assert all(p.startswith("clients.yaml:") for p in exc.problems)


# --- configuration ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A valid config (real files), the starting point that each example breaks."""
    directory = tmp_path_factory.mktemp("config-props")
    path, _ = write_config(
        directory,
        pki,
        clients=[],
        routes=[
            {"prefix": "/", "upstream": "http://127.0.0.1:8080", "auth": "client"},
            {
                "prefix": "/api",
                "upstream": "http://127.0.0.1:8081",
                "auth": "token",
                "scopes": ["a"],
            },
        ],
        extra={
            "limits": {"max_headers": 100, "header_read_timeout": 10, "max_connections": 100},
            "headers": {"client_id": "X-Client-Id"},
        },
    )
    data = yaml.safe_load(path.read_text())
    load_config(path, env={})  # the base itself is valid
    return directory, data


def paths_in(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths_in(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += paths_in(value, (*prefix, i))
    return found


def load_text(directory: Path, text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=directory, delete=False) as fh:
        fh.write(text)
    try:
        return load_config(fh.name, env=env or {})
    finally:
        Path(fh.name).unlink()


def assert_only_config_errors(
    directory: Path, text: str, env: dict[str, str] | None = None
) -> None:
    try:
        config = load_text(directory, text, env)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
        return
    # Whatever loads holds numbers a timer can use.
    limits = config.limits
    for number in (
        limits.header_read_timeout,
        limits.keepalive_timeout,
        limits.drain_delay,
        limits.send_timeout,
        limits.request_body_timeout,
        limits.request_body_min_rate,
    ):
        assert math.isfinite(number)
    for route in config.routes:
        assert math.isfinite(route.timeout) and math.isfinite(route.connect_timeout)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=yamlish)
def test_any_value_anywhere_in_a_valid_config_raises_only_config_error(
    base_config: tuple[Path, dict[str, Any]], data: st.DataObject, value: Any
) -> None:
    directory, base = base_config
    broken = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    path = data.draw(st.sampled_from(paths_in(broken)))
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert_only_config_errors(directory, yaml.safe_dump(broken))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,  # deeper than PyYAML's recursion
        "a: " + "{" * 3000,
        "limits: {header_read_timeout: .nan}",
        "limits: {keepalive_timeout: .inf}",
        "limits: {drain_delay: -.inf}",
        "limits: {send_timeout: .inf}",
        "limits: {request_body_min_rate: .nan}",
        f"limits: {{header_read_timeout: {'9' * 400}}}",
        "\x00\x01\x02",
        "%YAML 9.9\n---\na: 1",
        "!!python/object/apply:os.system ['true']",
        "a: &a [*a]",
    ],
    ids=lambda text: repr(text[:24]),
)
def test_hostile_config_text_raises_only_config_error(
    base_config: tuple[Path, dict[str, Any]], text: str
) -> None:
    directory, base = base_config
    if text.startswith("limits:"):
        merged = {**base, **yaml.safe_load(text)}
        text = yaml.safe_dump(merged)
    assert_only_config_errors(directory, text)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env=st.dictionaries(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [
                        "LISTENERS",
                        "0",
                        "1",
                        "TLS",
                        "BIND",
                        "LIMITS",
                        "MAX_HEADERS",
                        "ROUTES",
                        "TIMEOUT",
                        "REGISTRY",
                        "URL",
                        "KIND",
                        "TOKENS",
                        "LIFETIME",
                        "ADMIN",
                        "",
                    ]
                ),
                st.text(string.ascii_uppercase + "_", max_size=6),
            ),
            min_size=1,
            max_size=4,
        ).map(lambda parts: "MTLS_GATEWAY_" + "__".join(parts)),
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(["[", "{a: [", ".nan", ".inf", "-1", "~", "null", "{}", "1" * 400]),
        ),
        max_size=4,
    )
)
def test_environment_overrides_raise_only_config_error(
    base_config: tuple[Path, dict[str, Any]], env: dict[str, str]
) -> None:
    directory, base = base_config
    assert_only_config_errors(directory, yaml.safe_dump(base), env)


def test_deeply_nested_environment_value_is_read_as_text(
    base_config: tuple[Path, dict[str, Any]],
) -> None:
    directory, base = base_config
    env = {"MTLS_GATEWAY_LIMITS__MAX_HEADERS": "[" * 3000}
    with pytest.raises(ConfigError) as exc:
        load_text(directory, yaml.safe_dump(base), env)
    assert any("limits.max_headers" in p for p in exc.value.problems)


# --- forwarded client certificates (headers from load balancers) --------------------

FORMATS = ("rfc9440", "envoy_xfcc", "nginx", "traefik", "aws_alb")
fragments = st.sampled_from(
    [
        ":",
        "::",
        ",",
        ";",
        "=",
        '"',
        "\\",
        "%",
        "%0A",
        "%2",
        "Cert=",
        "Chain=",
        "Hash=",
        "-----BEGIN CERTIFICATE-----",
        "-----END CERTIFICATE-----",
        "\n",
        "\t",
        "MIIB",
        "AAAA",
        "====",
        quote("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
    ]
)


@settings(max_examples=400)
@given(
    fmt=st.sampled_from(FORMATS),
    raw=st.one_of(
        st.text(max_size=200),
        st.lists(st.one_of(fragments, st.text(max_size=8)), max_size=30).map("".join),
    ),
)
def test_forwarded_certificate_headers_raise_only_forwarded_cert_error(fmt: str, raw: str) -> None:
    # What auth.py does with a header from a trusted proxy: parse, then read the
    # leaf; the two documented errors are the only ways to fail (then: 403).
    try:
        result = parse_forwarded(fmt, raw)  # type: ignore[arg-type]
        if result is not None:
            identity_from_der(result.leaf)
    except (ForwardedCertError, CertificateError):
        return


@given(
    fmt=st.sampled_from(FORMATS),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "Client-Cert",
                "Client-Cert-Chain",
                "X-Forwarded-Client-Cert",
                "X-SSL-Client-Cert",
                "ssl-client-cert",
                "X-Forwarded-Tls-Client-Cert",
                "X-Amzn-Mtls-Clientcert",
            ]
        ),
        st.lists(st.text(max_size=20), max_size=3),
    ),
)
def test_forwarded_header_selection_raises_only_forwarded_cert_error(
    fmt: str, fields: dict[str, list[str]]
) -> None:
    try:
        raw = header_values(fmt, fields)  # type: ignore[arg-type]
    except ForwardedCertError:
        return
    assert raw is None or isinstance(raw, str)
