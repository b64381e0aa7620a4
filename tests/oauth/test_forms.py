"""Pure pieces of the OAuth surface: form parsing, scope requests, error rendering."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.oauth.errors import (
    InsufficientScopeError,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuthError,
    bearer_challenge,
)
from gateway.oauth.forms import parse_form
from gateway.oauth.token_endpoint import requested_scopes
from gateway.registry.model import Client

CLIENT = Client(client_id="c", secrets=(), allowed_scopes=("api1", "api2", "urn:x:read"))


def test_form_parameters_are_decoded() -> None:
    body = b"grant_type=client_credentials&client_id=mtls%2Eclient&scope=api1+api2"
    assert parse_form(body) == {
        "grant_type": "client_credentials",
        "client_id": "mtls.client",
        "scope": "api1 api2",
    }


def test_empty_parameters_count_as_absent() -> None:
    """RFC 6749 §3.1: sent without a value, treated as omitted."""
    assert parse_form(b"client_id=&scope=api1&&") == {"scope": "api1"}


@pytest.mark.parametrize("body", [b"a=1&a=2", b"a=1&a=", b"scope=x&b=2&scope=x"])
def test_repeated_parameters_are_invalid(body: bytes) -> None:
    """RFC 6749 §3.2: parameters must not be included more than once."""
    with pytest.raises(InvalidRequestError, match="more than once"):
        parse_form(body)


@pytest.mark.parametrize("body", [b"\xff=1", b"a=%ff", b"a=%c3%28"])
def test_invalid_utf8_is_invalid_request(body: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        parse_form(body)


def test_field_count_is_bounded() -> None:
    with pytest.raises(InvalidRequestError, match="fields"):
        parse_form(b"&".join(b"f%d=1" % i for i in range(65)))


@given(st.binary(max_size=400))
def test_any_bytes_parse_or_are_invalid_request(body: bytes) -> None:
    try:
        form = parse_form(body)
    except InvalidRequestError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in form.items())


def test_no_scope_asked_means_every_allowed_scope() -> None:
    assert list(requested_scopes(None, CLIENT)) == ["api1", "api2", "urn:x:read"]


def test_requested_scopes_keep_their_order() -> None:
    assert list(requested_scopes("urn:x:read  api1", CLIENT)) == ["urn:x:read", "api1"]


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("api1 admin", "not allowed for this client: admin"),
        ("API1", "not allowed"),  # scope values are case-sensitive (RFC 6749 §3.3)
        ("api1\tapi2", "characters"),
        ('api1 "quoted"', "characters"),
        ("caf\u00e9", "characters"),
        ("   ", "names no scope"),
    ],
)
def test_bad_scope_requests(scope: str, message: str) -> None:
    with pytest.raises(InvalidScopeError, match=message):
        requested_scopes(scope, CLIENT)


def test_errors_render_rfc6749_json() -> None:
    response = InvalidClientError("who are you").response()
    assert response.status == 401
    assert dict(response.headers)["Cache-Control"] == "no-store"
    assert json.loads(response.body) == {
        "error": "invalid_client",
        "error_description": "who are you",
    }


def test_every_error_is_one_type() -> None:
    assert issubclass(InsufficientScopeError, OAuthError)
    assert issubclass(InvalidScopeError, OAuthError)


def test_bearer_challenges() -> None:
    """RFC 6750 §3: error, error_description and scope as quoted auth-params."""
    assert bearer_challenge() == "Bearer"
    assert bearer_challenge("invalid_token", "token expired") == (
        'Bearer error="invalid_token", error_description="token expired"'
    )
    assert bearer_challenge("insufficient_scope", None, ["a", "b"]) == (
        'Bearer error="insufficient_scope", scope="a b"'
    )
    error = InsufficientScopeError("needs more", ["admin"])
    assert error.status == 403
    assert error.headers["WWW-Authenticate"].endswith('scope="admin"')


def test_descriptions_cannot_break_out_of_the_header() -> None:
    """RFC 6750 §3: error_description excludes '"' and '\\'; control characters too."""
    challenge = bearer_challenge("invalid_token", 'a"b\\c\r\nSet-Cookie: x=1\u00e9')
    assert challenge == 'Bearer error="invalid_token", error_description="a?b?c??Set-Cookie: x=1?"'
