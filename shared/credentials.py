"""API client secrets: high-entropy, stored as SHA-256, compared in constant time.

A 256-bit random secret needs no slow hash (there is nothing to brute-force); SHA-256 keeps
token issuing cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

SCOPES = frozenset({"jobs:write", "jobs:read", "jobs:work", "admin"})
#: What a tenant name looks like (API clients and IdP claims alike).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
TENANT = re.compile(TENANT_PATTERN)


def new_secret() -> str:
    return "jqs_" + secrets.token_urlsafe(32)


def new_callback_secret() -> str:
    """A secret that signs a client's callbacks (stored as is: HMAC needs it)."""
    return "jqcb_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def credential_digest(secret_hash: str) -> str:
    """What a token records of the secret it was issued against (the ``cv`` claim).

    Rotating the secret changes it, so tokens issued before a rotation stop working. Derived
    from the stored hash, it reveals nothing usable about the secret.
    """
    return hashlib.sha256(b"jobq-cv:" + secret_hash.encode()).hexdigest()[:16]
