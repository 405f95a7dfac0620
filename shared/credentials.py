"""API client secrets: high-entropy, stored as SHA-256, compared in constant time.

A 256-bit random secret needs no slow hash (there is nothing to brute-force); SHA-256 keeps
token issuing cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCOPES = frozenset({"jobs:write", "jobs:read", "jobs:work", "admin"})


def new_secret() -> str:
    return "jqs_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
