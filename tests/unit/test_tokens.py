"""Token checks: only a well-formed, unexpired HS256 token for us, with every claim, passes."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from services.api.tokens import (
    ALGORITHM,
    InvalidToken,
    Principal,
    TokenConfig,
    issue,
    verify,
)

CFG = TokenConfig(
    secret="s" * 64, issuer="jobq", audience="jobq", ttl_seconds=900, leeway_seconds=30
)
ALICE = Principal("client-1", "acme", frozenset({"jobs:read", "jobs:write"}))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "jobq", "aud": "jobq", "sub": "client-1", "tenant": "acme",
            "scope": "jobs:read", "iat": now, "exp": now + 60, "jti": "j1"}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], secret: str = CFG.secret, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm=ALGORITHM, headers={"kid": CFG.kid, **headers})


def test_an_issued_token_verifies_to_its_principal() -> None:
    assert verify(CFG, issue(CFG, ALICE)) == ALICE


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("wrong signature", sign(claims(), secret="t" * 64)),
        ("expired", sign(claims(exp=int(time.time()) - 31))),
        ("not yet valid", sign(claims(nbf=int(time.time()) + 120))),
        ("wrong audience", sign(claims(aud="someone-else"))),
        ("wrong issuer", sign(claims(iss="evil"))),
        ("no tenant", sign(claims(tenant=None))),
        ("no scope", sign(claims(scope=None))),
        ("no exp", sign(claims(exp=None))),
        ("no iat", sign(claims(iat=None))),
        ("no jti", sign(claims(jti=None))),
        (
            "unknown kid",
            jwt.encode(claims(), CFG.secret, algorithm="HS256", headers={"kid": "../../x"}),
        ),
        ("HS512", jwt.encode(claims(), CFG.secret, algorithm="HS512", headers={"kid": CFG.kid})),
        ("garbage", "not.a.token"),
        ("empty tenant", sign(claims(tenant=""))),
    ],
)
def test_bad_tokens_are_refused(name: str, token: str) -> None:
    with pytest.raises(InvalidToken):
        verify(CFG, token)


def test_alg_none_is_refused() -> None:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    for alg in ("none", "None", "NONE", "nOnE"):
        unsigned = f"{b64({'alg': alg, 'typ': 'JWT', 'kid': CFG.kid})}.{b64(claims())}."
        with pytest.raises(InvalidToken):
            verify(CFG, unsigned)


def test_clock_skew_within_the_leeway_is_accepted() -> None:
    assert verify(CFG, sign(claims(exp=int(time.time()) - 10))).tenant == "acme"
