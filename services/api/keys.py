"""Signing keys: each is pinned to one algorithm and named by a ``kid``.

A token is checked only against the key its ``kid`` names, with that key's algorithm. So an
``alg: none`` token, an HS256 token "signed" with a public key, or an unknown or path-like
``kid`` never reaches a signature check that could pass. Rotation is a keyring: one key signs,
every key in the ring verifies, so old tokens stay valid until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from shared.config import Settings, csv_list
from shared.errors import ConfigError

MIN_SECRET_CHARS = 32
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    algorithm: str
    #: The HMAC secret, or the public key object of an asymmetric key.
    verifying: Any = field(repr=False)
    #: The HMAC secret or private key object; ``None`` for a key that only verifies.
    signing: Any = field(default=None, repr=False)

    @property
    def public_jwk(self) -> dict[str, Any] | None:
        """The key as a public JWK (RFC 7517), or ``None`` for a shared secret."""
        if self.algorithm == "HS256":
            return None
        return {**_jwk(self.verifying), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


@dataclass(frozen=True, slots=True)
class Keyring:
    """One key signs; every key verifies (the signing key, and those being rotated in or out)."""

    signing: Key
    verifying: Mapping[str, Key]

    @classmethod
    def of(cls, signing: Key, others: Iterable[Key] = ()) -> Keyring:
        keys = {k.kid: k for k in others}
        keys[signing.kid] = signing
        return cls(signing, keys)

    def jwks(self) -> dict[str, Any]:
        """The public keys, as ``/.well-known/jwks.json`` serves them."""
        return {"keys": [jwk for k in self.verifying.values() if (jwk := k.public_jwk)]}


def hmac_key(secret: str) -> Key:
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"a JWT secret needs at least {MIN_SECRET_CHARS} random characters, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    kid = "hs-" + hashlib.sha256(secret.encode()).hexdigest()[:16]
    return Key(kid, "HS256", verifying=secret, signing=secret)


def pem_key(pem: bytes, source: str) -> Key:
    """An Ed25519 (EdDSA) or RSA (RS256) key from PEM: private keys sign, public keys verify."""
    private: Any = None
    try:
        private = load_pem_private_key(pem, password=None)
        public = private.public_key()
    except (ValueError, TypeError):
        try:
            public = load_pem_public_key(pem)
        except ValueError:
            raise ConfigError(f"{source} is not an unencrypted PEM key") from None
    if isinstance(public, ed25519.Ed25519PublicKey):
        algorithm = "EdDSA"
    elif isinstance(public, rsa.RSAPublicKey) and public.key_size >= MIN_RSA_BITS:
        algorithm = "RS256"
    else:
        raise ConfigError(f"{source}: use an Ed25519 key or an RSA key of {MIN_RSA_BITS}+ bits")
    return Key(_thumbprint(_jwk(public)), algorithm, verifying=public, signing=private)


def load_keyring(settings: Settings) -> Keyring:
    """The keyring ``settings`` describe; a missing, short or unreadable key is a ConfigError."""
    extra = [hmac_key(s) for s in csv_list(settings.jwt_extra_secrets)]
    extra += [pem_key(_read(path), path) for path in csv_list(settings.jwt_extra_public_key_files)]
    if settings.jwt_algorithm == "HS256":
        return Keyring.of(hmac_key(settings.signing_secret()), extra)
    if not settings.jwt_private_key_file:
        raise ConfigError(
            f"JOBQ_JWT_ALGORITHM={settings.jwt_algorithm} needs JOBQ_JWT_PRIVATE_KEY_FILE (PEM)"
        )
    signing = pem_key(_read(settings.jwt_private_key_file), settings.jwt_private_key_file)
    if signing.signing is None or signing.algorithm != settings.jwt_algorithm:
        raise ConfigError(
            f"JOBQ_JWT_PRIVATE_KEY_FILE must hold a private {settings.jwt_algorithm} key"
        )
    return Keyring.of(signing, extra)


def _jwk(public: Any) -> dict[str, Any]:
    algorithm = OKPAlgorithm if isinstance(public, ed25519.Ed25519PublicKey) else RSAAlgorithm
    return dict(algorithm.to_jwk(public, as_dict=True))


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 over the key's required members, sorted, no whitespace."""
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
