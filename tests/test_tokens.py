"""BitRouter tokens: the reference's test vectors, verification failures, and exp parsing.

Tokens for the negative cases come from an independent signer written here with pynacl and
the standard library, so the verifier is not only checked against its own minting code.
"""

import base64
import hashlib
import hmac
import json
import time

import pytest
from hypothesis import given, strategies as st
from nacl.signing import SigningKey

from bitrouter import Error, accounts, tokens

SEED = bytes(range(32))
PUBKEY = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"
CHAIN = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"
ISS = f"{CHAIN}:{PUBKEY}"
HEADER_B64 = "eyJhbGciOiJTT0xfRUREU0EiLCJ0eXAiOiJKV1QifQ"
ADMIN_TOKEN = (
    "eyJhbGciOiJTT0xfRUREU0EiLCJ0eXAiOiJKV1QifQ.eyJpc3MiOiJzb2xhbmE6NWV5a3Q0VXNGdjhQOE5KZFRSRXBZMXZ6cUtxWkt2ZHA6"
    "RkFlNHNpc0c5NW9aNDJ3N2J1VW41cUVFNFRBbmZUVEZQaWd1WlVIbWhpRiIsImNoYWluIjoic29sYW5hOjVleWt0NFVzRnY4UDhOSmRUUkVw"
    "WTF2enFLcVpLdmRwIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAzMDAsInNjb3BlIjoiYWRtaW4ifQ.5NKQMtbUvR-frXh3HDOUbG"
    "ECv29s4Y-bcEPeWQaRc_fUAZmi-J6pxVjIdGYPSXwFWbmICk28nXAGCU_bWiZ6Aw")
NOW = 1700000100


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64_json(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def sign(claims: dict, seed: bytes = SEED, header=None) -> str:
    """An independent SOL_EDDSA signer: Ed25519 over b64url(header).b64url(payload)."""
    head = b64_json(header or {"alg": "SOL_EDDSA", "typ": "JWT"})
    message = f"{head}.{b64_json(claims)}"
    return f"{message}.{b64(SigningKey(seed).sign(message.encode()).signature)}"


def claims_for(seed: bytes = SEED, **extra) -> dict:
    pubkey = accounts.b58encode(bytes(SigningKey(seed).verify_key))
    return {"iss": f"{CHAIN}:{pubkey}", "chain": CHAIN, "iat": NOW - 10, "scope": "api", **extra}


def rejected(token, trusted=frozenset({ISS}), **kwargs) -> str:
    with pytest.raises(tokens.AuthError) as caught:
        tokens.verify(token, set(trusted), now=kwargs.pop("now", NOW), **kwargs)
    assert caught.value.status == 401
    return str(caught.value)


# ---------------------------------------------------------------- Appendix A


def test_reference_key_material():
    key = SigningKey(SEED)
    assert accounts.b58encode(bytes(key.verify_key)) == PUBKEY
    assert b64(SEED) == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"


def test_reference_admin_token_is_byte_identical():
    token = tokens.mint(SigningKey(SEED), scope="admin", iat=1700000000, exp=1700000300)
    assert token == ADMIN_TOKEN
    assert token.split(".")[0] == HEADER_B64


def test_claim_order_and_compact_encoding_match_the_reference():
    token = tokens.mint(SigningKey(SEED), scope="api", iat=1700000000, exp=1702592000,
                        models=["openai:*", "default"], budget=2500000, budget_scope="session",
                        budget_range={"type": "rounds", "count": 10})
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    # The reference example minus `tools`, which BitRouter does not mint.
    assert payload == (
        b'{"iss":"solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp:FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF",'
        b'"chain":"solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp","iat":1700000000,"exp":1702592000,'
        b'"scope":"api","models":["openai:*","default"],"budget":2500000,"budget_scope":"session",'
        b'"budget_range":{"type":"rounds","count":10}}')


def test_non_ascii_model_names_are_written_as_utf8_like_the_original():
    token = tokens.mint(SigningKey(SEED), iat=1700000000, models=["modèle"])
    assert "modèle".encode() in base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert tokens.verify(token, {ISS}, now=NOW).models == ("modèle",)


def test_reference_token_verifies_with_its_claims():
    claims = tokens.verify(ADMIN_TOKEN, {ISS}, now=NOW)
    assert (claims.iss, claims.chain, claims.scope, claims.iat, claims.exp) == (
        ISS, CHAIN, "admin", 1700000000, 1700000300)
    assert claims.address == PUBKEY
    assert claims.token_hash == hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()


def test_trust_by_bare_base58_key():
    assert tokens.verify(ADMIN_TOKEN, {PUBKEY}, now=NOW).scope == "admin"


# ---------------------------------------------------------------- independent signer


def test_independently_signed_token_verifies():
    token = sign(claims_for(exp=NOW + 60, models=["openai:*"], budget=5, budget_scope="account",
                            budget_range={"type": "duration", "seconds": 3600}))
    claims = tokens.verify(token, {ISS}, now=NOW)
    assert claims.models == ("openai:*",)
    assert (claims.budget, claims.budget_scope) == (5, "account")
    assert claims.budget_range == {"type": "duration", "seconds": 3600}


def test_unknown_claims_are_ignored_like_the_original():
    token = sign(claims_for(tools=["github/*"]))
    assert tokens.verify(token, {ISS}, now=NOW).scope == "api"


def test_tampered_payload_is_a_bad_signature():
    head, payload, sig = sign(claims_for()).split(".")
    forged = b64_json(claims_for(scope="admin", exp=NOW + 60))
    assert rejected(f"{head}.{forged}.{sig}") == "bad signature"


def test_tampered_header_is_a_bad_signature():
    head, payload, sig = sign(claims_for()).split(".")
    other = b64_json({"typ": "JWT", "alg": "SOL_EDDSA"})
    assert rejected(f"{other}.{payload}.{sig}") == "bad signature"


def test_tampered_signature_is_rejected():
    head, payload, sig = sign(claims_for()).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    assert rejected(f"{head}.{payload}.{b64(bytes(raw))}") == "bad signature"


def test_non_canonical_spelling_of_a_valid_signature_is_malformed():
    # 64 bytes leave 4 unused bits in the last character; flipping one must not yield a
    # second valid spelling of the same token (it would dodge revocation by hash).
    head, payload, sig = sign(claims_for()).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(sig + "==")
    assert rejected(f"{head}.{payload}.{twin}").startswith("malformed token")


def test_signature_by_another_key_for_a_trusted_issuer():
    claims = claims_for()  # claims name the reference key...
    token = sign(claims, seed=bytes(32))  # ...but another key signed them
    assert rejected(token) == "bad signature"


@pytest.mark.parametrize("token", ["", None])
def test_missing_token(token):
    assert rejected(token) == "missing token"


@pytest.mark.parametrize("token", [
    "abc", "a.b", "a.b.c.d", "!!!.???.###", HEADER_B64 + ".e30=.AAAA", HEADER_B64 + ".bm90IGpzb24.AAAA",
    ADMIN_TOKEN + ".", " " + ADMIN_TOKEN])
def test_malformed_tokens(token):
    assert rejected(token).startswith("malformed token")


@pytest.mark.parametrize("change, why", [
    ({"scope": "root"}, "scope"),
    ({"iat": 1.5}, "iat"),
    ({"exp": -1}, "exp"),
    ({"exp": True}, "exp"),
    ({"budget": "5"}, "budget"),
    ({"models": "openai:*"}, "models"),
    ({"budget_scope": "team"}, "budget_scope"),
    ({"budget_range": {"type": "rounds", "count": -1}}, "budget_range"),
    ({"chain": "solana:devnet"}, "chain"),
    ({"iss": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp:0OIl"}, "iss"),
    ({"iss": "eip155:8453:0xedE35562d3555e61120a151B3c8e8e91d83a378a", "chain": "eip155:8453"}, "namespace"),
])
def test_malformed_claims_say_which(change, why):
    message = rejected(sign({**claims_for(), **change}))
    assert message.startswith("malformed token") and why in message


def test_alg_none_is_rejected():
    head = b64_json({"alg": "none", "typ": "JWT"})
    token = f"{head}.{b64_json(claims_for())}."
    assert rejected(token).startswith("malformed token")  # empty signature segment
    assert "'none'" in rejected(f"{head}.{b64_json(claims_for())}.AAAA")


def test_hs256_is_rejected_even_with_the_public_key_as_secret():
    head = b64_json({"alg": "HS256", "typ": "JWT"})
    message = f"{head}.{b64_json(claims_for())}"
    mac = hmac.new(PUBKEY.encode(), message.encode(), hashlib.sha256).digest()
    assert rejected(f"{message}.{b64(mac)}") == "unsupported token algorithm 'HS256': only SOL_EDDSA is accepted"


def test_eip191k_tokens_are_not_accepted():
    token = sign(claims_for(), header={"alg": "EIP191K", "typ": "JWT"})
    assert "EIP191K" in rejected(token)


def test_expired_with_clock_skew():
    token = sign(claims_for(exp=NOW))
    assert tokens.verify(token, {ISS}, now=NOW + 29, leeway=30).exp == NOW
    assert rejected(token, now=NOW + 30, leeway=30).startswith("token expired at")
    assert rejected(token, now=NOW, leeway=0).startswith("token expired at")


def test_issued_in_the_future():
    assert "issued in the future" in rejected(sign(claims_for(iat=NOW + 600)))


def test_admin_token_without_exp_is_rejected():
    assert rejected(sign(claims_for(scope="admin"))) == "admin tokens must have an expiry (exp)"


def test_untrusted_issuer():
    other = bytes(range(1, 33))
    token = sign(claims_for(seed=other), seed=other)
    assert rejected(token).startswith("untrusted issuer solana:")
    assert rejected(ADMIN_TOKEN, trusted=set()) == f"untrusted issuer {ISS}"


def test_revoked():
    token = sign(claims_for())
    assert rejected(token, revoked={tokens.token_hash(token)}) == "token revoked"
    assert tokens.verify(token, {ISS}, now=NOW, revoked={"other"}).scope == "api"


@given(st.binary(min_size=1, max_size=64))
def test_base58_round_trip(data):
    assert accounts.b58decode(accounts.b58encode(data)) == data


# ---------------------------------------------------------------- parsing helpers


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("30d", 30 * 86400), ("1y", 31_536_000)])
def test_parse_exp_units(text, seconds):
    assert tokens.parse_exp(text, now=1000) == 1000 + seconds


def test_parse_exp_never_and_none():
    assert tokens.parse_exp("never") is None
    assert tokens.parse_exp(None) is None


@pytest.mark.parametrize("value, message", [
    (3600, "a bare number is ambiguous"),
    ("1700000000", "a bare number is ambiguous"),
    ("0s", "is not in the future"),
    ("2w", 'unknown duration unit "w" in "2w"'),
    ("soon", 'invalid expiration format: "soon"'),
    ("-5m", 'invalid expiration format: "-5m"'),
    ("99999999999999999y", "too far in the future"),
])
def test_parse_exp_errors(value, message):
    with pytest.raises(Error, match=message):
        tokens.parse_exp(value, now=time.time())


@pytest.mark.parametrize("text, claim", [
    ("rounds:10", {"type": "rounds", "count": 10}),
    ("duration:3600", {"type": "duration", "seconds": 3600}),
    ("duration:60s", {"type": "duration", "seconds": 60}),
])
def test_budget_range(text, claim):
    assert tokens.parse_budget_range(text) == claim


@pytest.mark.parametrize("text, message", [
    ("weekly", "invalid budget range"), ("rounds:x", "invalid round count"),
    ("rounds:0", "invalid round count"), ("duration:1h", "invalid duration seconds")])
def test_budget_range_errors(text, message):
    with pytest.raises(Error, match=message):
        tokens.parse_budget_range(text)


@pytest.mark.parametrize("patterns, names, allowed", [
    (None, ("anything",), True),
    ([], ("anything",), True),
    (["openai:*"], ("openai:gpt-4o",), True),
    (["*/claude-*"], ("anthropic/claude-3.5",), True),
    (["default"], ("default-fast",), False),
    (["gpt-?"], ("gpt-4",), False),  # only * is special
    (["openai:*"], ("fast", "openai:gpt-4o-mini"), True),  # the resolved name may match
    (["openai:*"], ("fast", "anthropic:claude"), False),
])
def test_model_globs(patterns, names, allowed):
    assert tokens.model_allowed(patterns, *names) is allowed
