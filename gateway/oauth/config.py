"""The ``tokens:`` section: how the token endpoint signs access tokens (gateway/oauth/tokens.py, keys.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader
from gateway.config.values import boolean, choice, positive_int, string


@dataclass(frozen=True, slots=True)
class TokensConfig:
    signing_keys: tuple[Path, ...]
    lifetime: int
    audience: str
    scope_format: Literal["string", "array"]
    allow_insecure_key_permissions: bool


def parse_tokens(r: Reader, data: Any, issuer: str | None) -> TokensConfig:
    with r.at("tokens"):
        tk = r.mapping(
            data,
            {
                "signing_keys",
                "lifetime",
                "audience",
                "scope_format",
                "allow_insecure_key_permissions",
            },
        )
        keys: list[Path] = []
        with r.at("signing_keys"):
            raw = tk.get("signing_keys")
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not raw:
                r.problem(
                    "required: at least one signing key file (mtls-gateway keys generate FILE)"
                )
            else:
                keys = [r.file_at(i, p) for i, p in enumerate(raw)]
        return TokensConfig(
            signing_keys=tuple(k for k in keys if k is not None),
            lifetime=r.get(tk, "lifetime", positive_int, 3600),
            audience=r.get(tk, "audience", string, f"{issuer}/resources" if issuer else ""),
            scope_format=r.get(tk, "scope_format", choice("string", "array"), "string"),
            allow_insecure_key_permissions=r.get(
                tk, "allow_insecure_key_permissions", boolean, False
            ),
        )
