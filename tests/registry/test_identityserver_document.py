"""gateway.registry.identityserver_document: reading appsettings.json, finding the clients."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.registry.identityserver_document import DocumentError, locate_clients, parse_json


def test_plain_json_is_read_as_json() -> None:
    assert parse_json('{"a": [1, 2]}') == {"a": [1, 2]}


def test_comments_and_trailing_commas_as_aspnet_reads_them() -> None:
    text = """{
      // a line comment
      "Uri": "https://example.org/a//b", /* a block
         comment over lines */ "Note": "/* not a comment */ // nor this",
      "Escaped": "quote \\" then // still text",
      "List": [1, 2,],
    }"""
    assert parse_json(text) == {
        "Uri": "https://example.org/a//b",
        "Note": "/* not a comment */ // nor this",
        "Escaped": 'quote " then // still text',
        "List": [1, 2],
    }


def test_errors_keep_the_line_of_the_original_text() -> None:
    text = '{\n  /* one\n  two */\n  "a": 1,\n  "b": oops\n}'
    with pytest.raises(json.JSONDecodeError) as exc:
        parse_json(text)
    assert exc.value.lineno == 5


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ([{"ClientId": "x"}], ""),
        ({"Clients": [{"ClientId": "x"}]}, "Clients"),
        ({"IdentityServer": {"Clients": [{"ClientId": "x"}]}}, "IdentityServer:Clients"),
        (
            {"A": {"B": {"IdentityServer": {"Clients": [{"ClientId": "x"}]}}}},
            "A:B:IdentityServer:Clients",
        ),
        ({"IdentityServer__Clients": [{"ClientId": "x"}]}, "IdentityServer:Clients"),  # env form
        (
            # Another section named Clients: IdentityServer's is the one.
            {"Proxy": {"Clients": [{}]}, "IdentityServer": {"Clients": [{"ClientId": "x"}]}},
            "IdentityServer:Clients",
        ),
        ({"IdentityServer": {"Clients": {"1": {"ClientId": "y"}, "0": {"ClientId": "x"}}}}, None),
    ],
)
def test_locate_clients(document: Any, path: str | None) -> None:
    clients, found = locate_clients(document)
    assert clients[0] == {"ClientId": "x"}
    if path is not None:
        assert found == path
    else:
        assert clients == [{"ClientId": "x"}, {"ClientId": "y"}]  # .NET array order


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("text", "expected a JSON array of clients"),
        ({"ApiResources": []}, "IdentityServer:Clients section"),
        ({"Clients": "x"}, "IdentityServer:Clients section"),
        (
            {
                "One": {"IdentityServer": {"Clients": []}},
                "Two": {"IdentityServer": {"Clients": []}},
            },
            "several client lists (One:IdentityServer:Clients, Two:IdentityServer:Clients)",
        ),
    ],
)
def test_documents_without_one_client_list(document: Any, message: str) -> None:
    with pytest.raises(DocumentError) as exc:
        locate_clients(document)
    assert message in str(exc.value)
