"""Token checks: only a well-formed, unexpired token signed by a key of the ring with that key's
algorithm, carrying every claim, passes; external tokens only with the IdP's keys."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.api.keys import Key, Keyring, hmac_key, load_keyring, pem_key
from services.api.oidc import keys_of
from services.api.tokens import (
    ExternalIssuer,
    InvalidToken,
    Principal,
    TokenConfig,
    VerifiedTokens,
    issue,
    lifetime,
    verify,
    verify_external,
)
from shared.config import Settings
from shared.errors import ConfigError
from tests.forge import b64, hand_signed, pem

HS = hmac_key("s" * 64)
ED_PRIVATE = ed25519.Ed25519PrivateKey.generate()
RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)


ED = pem_key(pem(ED_PRIVATE), "ed.pem")
RS = pem_key(pem(RSA_PRIVATE), "rsa.pem")


def config(signing: Key = HS, *others: Key) -> TokenConfig:
    return TokenConfig(Keyring.of(signing, others), "jobq", "jobq", 900, 30)


CFG = config()
ALICE = Principal("client-1", "acme", frozenset({"jobs:read", "jobs:write"}), credential="cv1")


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "jobq", "aud": "jobq", "sub": "client-1", "tenant": "acme",
            "scope": "jobs:read", "iat": now, "exp": now + 60, "jti": "j1", "cv": "cv1"}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = HS.signing, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": HS.kid, **headers})


def test_an_issued_token_verifies_to_its_principal() -> None:
    assert verify(CFG, issue(CFG, ALICE)) == ALICE


def test_a_token_lives_its_ttl_but_never_beyond_its_clients_expiry() -> None:
    now = 1_800_000_000.25
    assert lifetime(CFG, now, None) == 900
    assert lifetime(CFG, now, datetime.fromtimestamp(now + 3600, UTC)) == 900
    expiring = datetime.fromtimestamp(now + 60.5, UTC)
    assert lifetime(CFG, now, expiring) == 60
    exp = jwt.decode(issue(CFG, ALICE, now, 60), options={"verify_signature": False})["exp"]
    assert exp <= expiring.timestamp()
    assert lifetime(CFG, now, datetime.fromtimestamp(now + 0.5, UTC)) <= 0  # as good as expired


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("wrong signature", sign(claims(), key="t" * 64)),
        ("expired", sign(claims(exp=int(time.time()) - 31))),
        ("not yet valid", sign(claims(nbf=int(time.time()) + 120))),
        ("issued in the future", sign(claims(iat=int(time.time()) + 120))),
        ("wrong audience", sign(claims(aud="someone-else"))),
        ("audience list without ours", sign(claims(aud=["a", "b"]))),
        ("wrong issuer", sign(claims(iss="evil"))),
        ("no tenant", sign(claims(tenant=None))),
        ("no scope", sign(claims(scope=None))),
        ("no exp", sign(claims(exp=None))),
        ("no iat", sign(claims(iat=None))),
        ("no iss", sign(claims(iss=None))),
        ("no aud", sign(claims(aud=None))),
        ("no sub", sign(claims(sub=None))),
        ("no jti", sign(claims(jti=None))),
        ("no credential version", sign(claims(cv=None))),
        ("empty tenant", sign(claims(tenant=""))),
        ("tenant not a string", sign(claims(tenant=["acme", "globex"]))),
        ("scope not a string", sign(claims(scope=["admin"]))),
        ("exp not a number", sign(claims(exp="tomorrow"))),
        ("no kid", jwt.encode(claims(), HS.signing, algorithm="HS256")),
        ("unknown kid", sign(claims(), kid="hs-0000000000000000")),
        ("path-like kid", sign(claims(), kid="../../../../etc/passwd")),
        (
            "kid not a string",
            hand_signed({"alg": "HS256", "kid": {"$ne": ""}}, claims(), HS.signing.encode()),
        ),
        ("HS512 with the right secret", sign(claims(), alg="HS512")),
        ("garbage", "not.a.token"),
        ("two parts", "a.b"),
        ("empty", ""),
        ("unicode", "ⓙⓦⓣ.ⓙⓦⓣ.ⓙⓦⓣ"),
    ],
)
def test_bad_tokens_are_refused(name: str, token: str) -> None:
    with pytest.raises(InvalidToken):
        verify(CFG, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(alg: str) -> None:
    unsigned = f"{b64({'alg': alg, 'typ': 'JWT', 'kid': HS.kid})}.{b64(claims())}."
    with pytest.raises(InvalidToken):
        verify(CFG, unsigned)


def test_clock_skew_within_the_leeway_is_accepted() -> None:
    assert verify(CFG, sign(claims(exp=int(time.time()) - 10))).tenant == "acme"


def test_a_rotated_out_key_still_verifies_until_removed_and_never_signs() -> None:
    new = hmac_key("n" * 64)
    before = issue(config(HS), ALICE)
    during = config(new, HS)
    assert verify(during, before) == ALICE
    assert jwt.get_unverified_header(issue(during, ALICE))["kid"] == new.kid
    with pytest.raises(InvalidToken):
        verify(config(new), before)


@pytest.mark.parametrize("key", [ED, RS], ids=["EdDSA", "RS256"])
def test_asymmetric_tokens_verify_and_the_jwks_holds_only_public_keys(key: Key) -> None:
    cfg = config(key)
    token = issue(cfg, ALICE)
    assert jwt.get_unverified_header(token) == {"alg": key.algorithm, "typ": "JWT", "kid": key.kid}
    assert verify(cfg, token) == ALICE
    [jwk] = cfg.keys.jwks()["keys"]
    assert jwk["kid"] == key.kid
    assert jwk["alg"] == key.algorithm
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    # anyone holding the JWKS verifies the token without jobq's help
    public = jwt.PyJWK(jwk)
    assert jwt.decode(token, public.key, algorithms=[key.algorithm], audience="jobq")["sub"]


@pytest.mark.parametrize("key", [ED, RS], ids=["EdDSA", "RS256"])
def test_hs256_signed_with_the_public_key_is_refused(key: Key) -> None:
    """The classic algorithm-confusion attack: the public key as an HMAC secret."""
    public_pem = pem(ED_PRIVATE if key is ED else RSA_PRIVATE, private=False)
    forged = hand_signed({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims(), public_pem)
    with pytest.raises(InvalidToken):
        verify(config(key), forged)


def test_a_token_signed_by_another_asymmetric_key_with_our_kid_is_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    forged = jwt.encode(claims(), other, algorithm="EdDSA", headers={"kid": ED.kid})
    with pytest.raises(InvalidToken):
        verify(config(ED), forged)


def test_the_keyring_comes_from_settings(tmp_path: Any) -> None:
    (tmp_path / "ed.pem").write_bytes(pem(ED_PRIVATE))
    (tmp_path / "old.pub").write_bytes(pem(RSA_PRIVATE, private=False))
    ring = load_keyring(
        Settings(
            jwt_algorithm="EdDSA",
            jwt_private_key_file=str(tmp_path / "ed.pem"),
            jwt_extra_public_key_files=str(tmp_path / "old.pub"),
            jwt_extra_secrets="o" * 40,
        )
    )
    assert ring.signing.kid == ED.kid
    assert set(ring.verifying) == {ED.kid, RS.kid, hmac_key("o" * 40).kid}
    assert len(ring.jwks()["keys"]) == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(jwt_secret="short"), "at least 32"),
        (Settings(), "JOBQ_JWT_SECRET"),
        (Settings(jwt_algorithm="EdDSA"), "JOBQ_JWT_PRIVATE_KEY_FILE"),
        (Settings(jwt_algorithm="EdDSA", jwt_private_key_file="/nonexistent.pem"), "cannot read"),
        (Settings(jwt_secret="k" * 40, jwt_extra_secrets="short"), "at least 32"),
    ],
)
def test_bad_key_settings_fail_at_start(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_keyring(settings)


def test_a_public_key_cannot_be_the_signing_key(tmp_path: Any) -> None:
    (tmp_path / "ed.pub").write_bytes(pem(ED_PRIVATE, private=False))
    with pytest.raises(ConfigError, match="private EdDSA"):
        load_keyring(Settings(jwt_algorithm="EdDSA", jwt_private_key_file=str(tmp_path / "ed.pub")))
    (tmp_path / "junk.pem").write_text("-----BEGIN NOTHING-----")
    with pytest.raises(ConfigError, match="not an unencrypted PEM"):
        pem_key((tmp_path / "junk.pem").read_bytes(), "junk.pem")


IDP = ExternalIssuer(
    issuer="https://idp.example",
    audience="jobq-api",
    jwks_url="https://idp.example/jwks",
    algorithms=("RS256", "EdDSA"),
    tenant_claim="org",
    scope_claim="roles",
)
IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IDP_JWKS = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(IDP_KEY.public_key())), "kid": "idp-1"}]}  # fmt: skip


def idp_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": IDP.issuer, "aud": "jobq-api", "sub": "alice@example", "org": "acme",
            "roles": ["jobs:read", "billing:admin"], "iat": now, "exp": now + 60}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def idp_sign(payload: dict[str, Any], key: Any = IDP_KEY, kid: str = "idp-1") -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def test_an_idp_token_maps_its_claims_to_tenant_and_known_scopes() -> None:
    keys = keys_of(IDP_JWKS, IDP.algorithms)
    principal = verify_external(IDP, keys, idp_sign(idp_claims()), 30)
    assert principal == Principal(
        "https://idp.example#alice@example", "acme", frozenset({"jobs:read"})
    )
    as_string = verify_external(IDP, keys, idp_sign(idp_claims(roles="jobs:write x")), 30)
    assert as_string.scopes == {"jobs:write"}
    listed_aud = verify_external(IDP, keys, idp_sign(idp_claims(aud=["other", "jobq-api"])), 30)
    assert listed_aud.tenant == "acme"


def test_an_idp_token_never_grants_admin() -> None:
    token = idp_sign(idp_claims(roles=["admin", "jobs:read"]))
    assert verify_external(IDP, keys_of(IDP_JWKS, IDP.algorithms), token, 30).scopes == {
        "jobs:read"
    }


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("wrong audience", idp_sign(idp_claims(aud="jobq"))),
        ("wrong issuer", idp_sign(idp_claims(iss="https://evil.example"))),
        ("expired", idp_sign(idp_claims(exp=int(time.time()) - 60))),
        ("no tenant claim", idp_sign(idp_claims(org=None))),
        ("tenant claim not a string", idp_sign(idp_claims(org=7))),
        ("tenant claim path-like", idp_sign(idp_claims(org="../acme"))),
        ("tenant claim with a newline", idp_sign(idp_claims(org="acme\n"))),
        ("audience list without ours", idp_sign(idp_claims(aud=["a", "b"]))),
        ("no scope claim", idp_sign(idp_claims(roles=None))),
        ("no iat", idp_sign(idp_claims(iat=None))),
        ("unknown kid", idp_sign(idp_claims(), kid="idp-2")),
        ("signed by another key", idp_sign(idp_claims(), key=RSA_PRIVATE)),
        (
            "HS256 with the IdP's public key",
            hand_signed({"alg": "HS256", "kid": "idp-1"}, idp_claims(), pem(IDP_KEY, False)),
        ),
    ],
)
def test_bad_idp_tokens_are_refused(name: str, token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_external(IDP, keys_of(IDP_JWKS, IDP.algorithms), token, 30)


def test_jwks_keys_of_a_disallowed_algorithm_or_without_kid_are_ignored() -> None:
    jwks = {
        "keys": [
            {**IDP_JWKS["keys"][0], "kid": "a"},
            {**IDP_JWKS["keys"][0], "kid": "enc", "use": "enc"},
            {k: v for k, v in IDP_JWKS["keys"][0].items() if k != "kid"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            "junk",
        ]
    }
    assert set(keys_of(jwks, ("RS256",))) == {"a"}
    assert keys_of(jwks, ("EdDSA",)) == {}
    assert keys_of("not a jwks", ("RS256",)) == {}


def test_a_remembered_token_is_refused_once_it_expires_and_a_forged_one_never_enters() -> None:
    tokens = VerifiedTokens(CFG, size=2)
    # Expires (with the leeway) within a second
    expires = int(time.time()) + 1 - CFG.leeway_seconds
    token = sign(claims(exp=expires, iat=expires - 60))
    principal = tokens.verify(token)
    assert tokens.verify(token) == principal  # remembered
    time.sleep(max(0.0, expires + CFG.leeway_seconds - time.time()) + 0.05)
    with pytest.raises(InvalidToken):
        tokens.verify(token)
    assert token not in tokens._seen
    # Its signature changed: another text, verified afresh, and refused
    token = issue(CFG, ALICE)
    tokens.verify(token)
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[::-1]}"
    with pytest.raises(InvalidToken):
        tokens.verify(forged)
    assert forged not in tokens._seen


def test_the_memory_is_bounded_oldest_first() -> None:
    tokens = VerifiedTokens(CFG, size=2)
    issued = [issue(CFG, ALICE) for _ in range(3)]
    for token in issued:
        tokens.verify(token)
    assert list(tokens._seen) == issued[1:]
