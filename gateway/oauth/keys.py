"""Token-signing keys: generate, load, publish (JWKS) and rotate.

A key file is an unencrypted PKCS#8 PEM, owner-only (0600), optionally preceded
by a ``# alg: PS256`` line: PEM readers ignore text before ``-----BEGIN``, and
the line is the only way to tell an RS256 key from a PS256 one after a reload.

Rotation: ``tokens.signing_keys`` is ordered; the first key signs, all are
published, so tokens signed by a retired key still verify until they expire.
The set is a Reloadable part (gateway/lifecycle): the file watcher re-reads it
when a key file changes, and SIGHUP at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, KeyParameters, OKPKey, RSAKey

from gateway.lifecycle import ReloadableBase, ReloadFailed

ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")

# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" in favour of
# "Ed25519". The operator chose "EdDSA" explicitly (`keys generate --alg EdDSA`)
# and it is the name verifiers (PyJWT, jose, IdentityModel) accept today; a
# warning from every signature and verification would only be noise.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

log = logging.getLogger("gateway.oauth")

AsymmetricJWK: TypeAlias = ECKey | RSAKey | OKPKey

_MAX_KEY_FILE = 64 * 1024  # an RSA-8192 PEM is ~6.5 KiB
_ALG_LINE = re.compile(r"#\s*alg\s*:\s*(\S+)\s*", re.IGNORECASE)
_RSA_MIN_BITS = 2048  # RFC 7518 §3.3 / §3.5


class SigningKeyError(Exception):
    """A key file is missing, unsafe or unusable; the message names the file."""


@dataclass(frozen=True)
class SigningKey:
    """One private signing key and the public JWK the JWKS publishes for it."""

    path: Path
    alg: str
    kid: str  # RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key
    private_key: AsymmetricJWK = field(repr=False, compare=False)
    public_jwk: dict[str, Any] = field(repr=False, compare=False)


def key_id(key: AsymmetricJWK) -> str:
    """RFC 7638 thumbprint: stable across restarts and replicas, derived from the
    public key alone, so every replica sharing a key Secret publishes one kid."""
    return key.thumbprint()


def _algorithms_for(path: Path, raw: object) -> tuple[str, ...]:
    """Which JWS algorithms a private key can serve (RFC 7518 §3, RFC 8037 §3.1)."""
    if isinstance(raw, ec.EllipticCurvePrivateKey):
        if isinstance(raw.curve, ec.SECP256R1):
            return ("ES256",)
        raise SigningKeyError(f"{path}: EC curve {raw.curve.name} is not supported (use P-256)")
    if isinstance(raw, rsa.RSAPrivateKey):
        if raw.key_size < _RSA_MIN_BITS:
            raise SigningKeyError(f"{path}: RSA key of {raw.key_size} bits is too small (min 2048)")
        return ("RS256", "PS256")  # first one is the default when no "# alg:" line
    if isinstance(raw, ed25519.Ed25519PrivateKey):
        return ("EdDSA",)
    raise SigningKeyError(
        f"{path}: unsupported key type {type(raw).__name__} (use EC P-256, RSA or Ed25519)"
    )


def _declared_alg(path: Path, preamble: str) -> str | None:
    declared: str | None = None
    for line in preamble.splitlines():
        match = _ALG_LINE.fullmatch(line.strip())
        if match is None:
            continue
        value = match.group(1)
        if value not in ALGORITHMS:
            raise SigningKeyError(
                f"{path}: unknown alg {value!r} (expected one of {', '.join(ALGORITHMS)})"
            )
        if declared is not None and declared != value:
            raise SigningKeyError(f"{path}: conflicting '# alg:' lines")
        declared = value
    return declared


def _key_from_pem(path: Path, data: bytes) -> SigningKey:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise SigningKeyError(f"{path}: not a PEM file (non-ASCII content)") from None
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise SigningKeyError(f"{path}: not a PEM file (no -----BEGIN line)")
    declared = _declared_alg(path, text[:begin])
    pem = text[begin:].encode("ascii")
    try:
        raw = load_pem_private_key(pem, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise SigningKeyError(
            f"{path}: key is encrypted; the gateway needs an unencrypted key"
        ) from None
    except UnsupportedAlgorithm:
        raise SigningKeyError(f"{path}: unsupported key algorithm") from None
    except ValueError:
        raise SigningKeyError(f"{path}: not a PEM private key") from None

    allowed = _algorithms_for(path, raw)
    alg = declared or allowed[0]
    if alg not in allowed:
        raise SigningKeyError(f"{path}: '# alg: {alg}' does not fit this key (use {allowed[0]})")

    # "alg" and "use" on the JWK make joserfc refuse any other use of the key
    # (RFC 7517 §4.2, §4.4), a second guard against algorithm confusion.
    params: KeyParameters = {"alg": alg, "use": "sig"}
    key: AsymmetricJWK
    try:
        if alg == "ES256":
            key = ECKey.import_key(pem, parameters=params)
        elif alg == "EdDSA":
            key = OKPKey.import_key(pem, parameters=params)
        else:
            key = RSAKey.import_key(pem, parameters=params)
    except (JoseError, ValueError) as exc:
        raise SigningKeyError(f"{path}: cannot use key: {exc}") from None
    kid = key_id(key)
    public_jwk: dict[str, Any] = dict(key.as_dict(private=False))
    public_jwk.update(kid=kid, alg=alg, use="sig")
    return SigningKey(path=path, alg=alg, kid=kid, private_key=key, public_jwk=public_jwk)


def load_signing_key(path: Path, *, allow_insecure_permissions: bool = False) -> SigningKey:
    """Read a key file, refusing one that group or other may read or write."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SigningKeyError(f"{path}: no such file") from None
    except PermissionError:
        raise SigningKeyError(f"{path}: not readable (permission denied)") from None
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        # fstat on the open file: the mode checked is that of the bytes actually
        # read, even if the file is swapped meanwhile.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"{path}: not a regular file")
        if st.st_mode & 0o077 and not allow_insecure_permissions:
            raise SigningKeyError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} let group/other access "
                "the signing key; chmod 600 it (or allow insecure permissions)"
            )
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # owned by fh now
            data = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise SigningKeyError(f"{path}: too large to be a signing key")
    if not data.strip():
        raise SigningKeyError(f"{path}: file is empty")
    return _key_from_pem(path, data)


def _new_private_pem(alg: str) -> bytes:
    key: AsymmetricJWK
    if alg == "ES256":
        key = ECKey.generate_key("P-256")
    elif alg == "EdDSA":
        key = OKPKey.generate_key("Ed25519")
    else:
        key = RSAKey.generate_key(3072)  # NIST SP 800-57: 128-bit strength, like P-256
    return key.as_pem(private=True)  # PKCS#8, unencrypted


def _write_exclusive(path: Path, data: bytes) -> None:
    try:
        # O_EXCL: never clobber an existing key, and 0600 from birth (no chmod race).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise SigningKeyError(f"{path}: cannot write: {exc.strerror}") from None


def _write_replacing(path: Path, data: bytes) -> None:
    # Temp file in the same directory (mkstemp: O_EXCL, 0600) then rename: a
    # reader sees the old key or the new one, never a torn file.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot create a file beside it: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SigningKeyError(f"{path}: cannot write: {exc.strerror}") from None


def generate_signing_key(path: Path, alg: str = "ES256", *, overwrite: bool = False) -> SigningKey:
    """Create a new key file: ES256 → P-256, RS256/PS256 → RSA-3072, EdDSA → Ed25519."""
    path = Path(path)
    if alg not in ALGORITHMS:
        raise SigningKeyError(
            f"{path}: unsupported alg {alg!r} (expected one of {', '.join(ALGORITHMS)})"
        )
    data = f"# alg: {alg}\n".encode("ascii") + _new_private_pem(alg)
    key = _key_from_pem(path, data)  # parse before writing: only a loadable file lands
    if overwrite:
        _write_replacing(path, data)
    else:
        _write_exclusive(path, data)
    return key


@dataclass(frozen=True)
class _Snapshot:
    keys: tuple[SigningKey, ...]
    by_kid: Mapping[str, SigningKey]

    @classmethod
    def of(cls, keys: Iterable[SigningKey]) -> _Snapshot:
        ordered = tuple(keys)
        if not ordered:
            raise SigningKeyError("tokens.signing_keys: no signing key configured")
        by_kid: dict[str, SigningKey] = {}
        for key in ordered:
            if key.kid in by_kid:
                raise SigningKeyError(f"{key.path}: same key as {by_kid[key.kid].path}")
            by_kid[key.kid] = key
        return cls(ordered, MappingProxyType(by_kid))


class SigningKeySet(ReloadableBase):
    """The configured keys, in order: the first signs, all are published.

    Immutability: every read goes through one immutable ``_Snapshot``; a
    reload builds a complete new snapshot from every key file and swaps it in
    with a single attribute assignment (atomic under the GIL). A reader
    therefore sees either the old set or the new one, never a mix, and a
    failed reload (a half-written or truncated Secret) leaves the old snapshot
    untouched: signing goes on with the current keys. Readers must fetch what
    they need in one call (``signing_key``, ``verification_key``), not hold
    the set across a swap expecting it unchanged.
    """

    def __init__(
        self, keys: Sequence[SigningKey], *, allow_insecure_permissions: bool = False
    ) -> None:
        super().__init__(
            name="signing_keys",
            logger=log,
            failure="signing key reload failed, keeping current keys",
        )
        self._snapshot = _Snapshot.of(keys)
        self._paths = tuple(key.path for key in self._snapshot.keys)
        self._allow_insecure_permissions = allow_insecure_permissions

    @classmethod
    def load(
        cls, paths: Iterable[Path], *, allow_insecure_permissions: bool = False
    ) -> SigningKeySet:
        keys = [
            load_signing_key(Path(p), allow_insecure_permissions=allow_insecure_permissions)
            for p in paths
        ]
        return cls(keys, allow_insecure_permissions=allow_insecure_permissions)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._snapshot.keys

    @property
    def signing_key(self) -> SigningKey:
        return self._snapshot.keys[0]

    def verification_key(self, kid: str) -> SigningKey | None:
        return self._snapshot.by_kid.get(kid)

    def jwks(self) -> dict[str, Any]:
        """RFC 7517 §5 JWK Set of the public keys (copies: callers may mutate)."""
        return {"keys": [dict(key.public_jwk) for key in self._snapshot.keys]}

    def watched_files(self) -> tuple[Path, ...]:
        return self._paths

    def rebuild(self) -> None:
        try:
            snapshot = _Snapshot.of(
                load_signing_key(path, allow_insecure_permissions=self._allow_insecure_permissions)
                for path in self._paths
            )
        except SigningKeyError as exc:
            raise ReloadFailed([str(exc)]) from None
        self._snapshot = snapshot
        log.info(
            "signing keys reloaded",
            extra={
                "event": "keys_reloaded",
                "signing_kid": snapshot.keys[0].kid,
                "kids": [key.kid for key in snapshot.keys],
            },
        )
