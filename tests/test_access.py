"""The server's access gate, driven directly: trust, modes, caching, scope, models, budgets, spend.

Everything here is real: a home on disk, config.load, SQLite, the spend writer thread,
and tokens from the CLI's own account files or from an independent pynacl signer.
"""

import base64
import json
import time
from datetime import timezone

import gevent
import pytest
import yaml
from nacl.signing import SigningKey

from conftest import run_cli, wait_until

from bitrouter import Error, accounts, config, protocols, proxy, server, store, tokens
from bitrouter import home as home_mod
from bitrouter.access import Gate, credential
from bitrouter.metrics import Metrics
from bitrouter.protocols import Usage
from bitrouter.router import Router

CHAIN = accounts.SOLANA_CHAIN


def write_config(root, **sections):
    (root / "bitrouter.yaml").write_text(yaml.safe_dump(sections))
    return config.load(home_mod.at(root), environ={})


@pytest.fixture
def root(tmp_path):
    return tmp_path


@pytest.fixture
def gates():
    """Factory for Gates that are closed (spend flushed) at teardown."""
    made = []

    def make(root, cfg, metrics=None):
        db = store.Store(cfg.database_url, shared=True)
        if metrics is None:
            gate = Gate(home_mod.at(root), cfg, db)
        else:  # as the Server wires it
            gate = Gate(home_mod.at(root), cfg, db, settle=metrics.fold)
            metrics.deferred_listeners.append(gate.record)
        made.append((gate, db))
        return gate
    yield make
    for gate, db in made:
        gate.close()
        db.close()


def signer(seed=bytes(range(32))):
    return SigningKey(seed)


def issuer(key) -> str:
    return f"{CHAIN}:{accounts.b58encode(bytes(key.verify_key))}"


def token_for(key, **claims) -> str:
    """An independently signed token (pynacl + json here, not bitrouter.tokens.mint)."""
    body = {"iss": issuer(key), "chain": CHAIN, "iat": int(time.time()), "scope": "api", **claims}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    head = b64(b'{"alg":"SOL_EDDSA","typ":"JWT"}')
    message = f"{head}.{b64(json.dumps(body, separators=(',', ':')).encode())}"
    return f"{message}.{b64(key.sign(message.encode()).signature)}"


def refused(status, call, *args):
    with pytest.raises(tokens.AuthError) as caught:
        call(*args)
    assert caught.value.status == status
    return caught.value.message


def local_account(root) -> SigningKey:
    accounts.generate(home_mod.at(root))
    return accounts.load_signing_key(home_mod.at(root))


# ---------------------------------------------------------------- credentials


@pytest.mark.parametrize("headers, query, found", [
    ({"authorization": "Bearer abc"}, {}, "abc"),
    ({"authorization": "bearer  abc "}, {}, "abc"),
    ({"authorization": "Payment xyz, Bearer abc"}, {}, "abc"),
    ({"authorization": "Basic Zm9v", "x-api-key": "k"}, {}, "k"),
    ({"x-api-key": "k", "x-goog-api-key": "g"}, {}, "k"),
    ({"x-goog-api-key": "g"}, {"key": "q"}, "g"),
    ({"x-api-key": ""}, {"key": "q"}, "q"),
    ({}, {}, None),
])
def test_credential_sources_in_order(headers, query, found):
    assert credential(headers, query) == found


# ---------------------------------------------------------------- modes


def test_auto_mode_without_issuers_is_open_on_loopback(root, gates):
    gate = gates(root, write_config(root))
    assert gate.authenticate(gate.cfg, None, "admin") is None


def test_auto_mode_refuses_to_start_open_on_a_public_address(root):
    cfg = write_config(root, server={"listen": "0.0.0.0:8787"})
    with store.Store(cfg.database_url) as db, \
            pytest.raises(Error, match="refusing to serve without authentication on 0.0.0.0:8787"):
        Gate(home_mod.at(root), cfg, db)


def test_explicit_open_mode_may_serve_a_public_address(root, gates):
    local_account(root)
    gate = gates(root, write_config(root, server={"listen": "0.0.0.0:8787"}, auth={"mode": "open"}))
    assert gate.authenticate(gate.cfg, None, "api") is None


def test_on_mode_without_issuers_refuses_everything(root, gates):
    gate = gates(root, write_config(root, auth={"mode": "on"}))
    assert refused(401, gate.authenticate, gate.cfg, None, "api").startswith("missing token")
    key = signer()
    assert refused(401, gate.authenticate, gate.cfg, token_for(key), "api").startswith("untrusted issuer")


def test_a_new_account_turns_auth_on_at_once(root, gates):
    gate = gates(root, write_config(root))
    assert gate.authenticate(gate.cfg, None, "api") is None
    key = local_account(root)
    assert refused(401, gate.authenticate, gate.cfg, None, "api").startswith("missing token")
    assert gate.authenticate(gate.cfg, token_for(key), "api").iss == issuer(key)


def test_configured_issuers_by_caip10_or_base58(root, gates):
    a, b, c = signer(bytes(32)), signer(bytes([1] * 32)), signer(bytes([2] * 32))
    cfg = write_config(root, auth={"trusted_issuers": [issuer(a), accounts.b58encode(bytes(b.verify_key)),
                                                       "not-a-key"]})
    gate = gates(root, cfg)
    assert gate.authenticate(cfg, token_for(a), "api").iss == issuer(a)
    assert gate.authenticate(cfg, token_for(b), "api").iss == issuer(b)
    assert refused(401, gate.authenticate, cfg, token_for(c), "api").startswith("untrusted issuer")


def test_reload_applies_new_trust_at_once(root, gates):
    key = signer(bytes(32))
    cfg = write_config(root, auth={"mode": "on", "trusted_issuers": [issuer(key)]})
    gate = gates(root, cfg)
    token = token_for(key)
    assert gate.authenticate(cfg, token, "api")  # now cached
    reloaded = write_config(root, auth={"mode": "on", "trusted_issuers": []})
    assert refused(401, gate.authenticate, reloaded, token, "api").startswith("untrusted issuer")


# ---------------------------------------------------------------- tokens


def test_scope_admin_routes_need_admin(root, gates):
    key = local_account(root)
    gate = gates(root, write_config(root))
    api = token_for(key)
    assert refused(403, gate.authenticate, gate.cfg, api, "admin") == \
        "this route needs an admin token (keygen --scope admin)"
    admin = token_for(key, scope="admin", exp=int(time.time()) + 60)
    assert gate.authenticate(gate.cfg, admin, "admin").scope == "admin"
    assert gate.authenticate(gate.cfg, admin, "api").scope == "admin"


def test_revocation_takes_effect_at_once_despite_the_cache(root, gates):
    key = local_account(root)
    gate = gates(root, write_config(root))
    token = run_cli(root, "keygen", "--name", "ci").stdout.strip()
    assert gate.authenticate(gate.cfg, token, "api").iss == issuer(key)
    assert gate.authenticate(gate.cfg, token, "api")  # served from the cache
    assert run_cli(root, "keys", "--rm", "ci").returncode == 0
    assert refused(401, gate.authenticate, gate.cfg, token, "api") == "token revoked"


def test_cached_token_still_expires(root, gates):
    key = local_account(root)
    gate = gates(root, write_config(root, auth={"clock_skew": 0}))
    exp = int(time.time()) + 1
    token = token_for(key, exp=exp)
    assert gate.authenticate(gate.cfg, token, "api")
    wait_until(lambda: time.time() >= exp, what="the token's exp")  # the clock, not a thread
    assert refused(401, gate.authenticate, gate.cfg, token, "api").startswith("token expired at")


def test_invalid_tokens_are_not_cached(root, gates):
    key = local_account(root)
    gate = gates(root, write_config(root))
    token = token_for(key)
    head, body, sig = token.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(sig + "=="))
    flipped[0] ^= 1
    bad = f"{head}.{body}.{base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip('=')}"
    assert refused(401, gate.authenticate, gate.cfg, bad, "api") == "bad signature"
    assert refused(401, gate.authenticate, gate.cfg, bad, "api") == "bad signature"


# ---------------------------------------------------------------- models and budgets


def routes(root, **models):
    cfg = write_config(root, models=models)
    return cfg, Router(cfg, {}, None)


def test_model_globs_match_the_requested_name_or_narrow_the_endpoints(root, gates):
    key = local_account(root)
    cfg, router = routes(root, fast={"endpoints": ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]})
    gate = gates(root, cfg)
    by_name = gate.authenticate(cfg, token_for(key, models=["fast"]), "api")
    assert len(gate.authorize(by_name, router.resolve("fast")).endpoints) == 2
    by_upstream = gate.authenticate(cfg, token_for(key, models=["anthropic:*"]), "api")
    narrowed = gate.authorize(by_upstream, router.resolve("fast"))
    assert [e.label for e in narrowed.endpoints] == ["anthropic:claude-haiku-4-5"]
    assert gate.authorize(by_upstream, router.resolve("anthropic:claude-opus-4")).name == "anthropic:claude-opus-4"
    message = refused(403, gate.authorize, by_upstream, router.resolve("openai:gpt-4o"))
    assert message == "model 'openai:gpt-4o' is not allowed for this token (allowed: anthropic:*)"
    anything = gate.authenticate(cfg, token_for(key), "api")
    assert gate.authorize(anything, router.resolve("fast")).endpoints == router.resolve("fast").endpoints


def finish(metrics, claims, cost, status=200, model="openai:gpt-4o"):
    record = metrics.begin("openai", model, False)
    record.account, record.token_hash = claims.iss, claims.token_hash
    record.status, record.upstream, record.cost_micro_usd = status, model, cost
    record.usage = Usage(input=10, output=5)
    metrics.finish(record)


def test_budget_is_enforced_before_the_next_call_including_unflushed_spend(root, gates):
    key = local_account(root)
    cfg, router = routes(root)
    metrics = Metrics()
    gate = gates(root, cfg, metrics)
    claims = gate.authenticate(cfg, token_for(key, budget=1000), "api")
    route = router.resolve("openai:gpt-4o")
    gate.authorize(claims, route)
    finish(metrics, claims, 600)
    gate.authorize(claims, route)  # 600 < 1000
    finish(metrics, claims, 600)  # the call that crosses the line is allowed to finish
    assert refused(402, gate.authorize, claims, route) == \
        "budget exhausted: this token spent 1200 of 1000 micro-USD"
    other = gate.authenticate(cfg, token_for(key, budget=1000, exp=int(time.time()) + 600), "api")
    assert gate.authorize(other, route)  # session scope: another token has its own budget


def test_a_budget_check_counts_requests_the_metrics_have_not_folded_in_yet(root, gates):
    key = local_account(root)
    cfg, router = routes(root)
    metrics = Metrics()
    metrics.timer = gevent.get_hub().loop.timer(3600)  # as when serving, with a fold that waits
    gate = gates(root, cfg, metrics)
    claims = gate.authenticate(cfg, token_for(key, budget=1000), "api")
    route = router.resolve("openai:gpt-4o")
    record = metrics.begin("openai", "openai:gpt-4o", False)
    record.account, record.token_hash = claims.iss, claims.token_hash
    gate.authorize(claims, route, record)
    record.status, record.upstream, record.cost_micro_usd = 200, "openai:gpt-4o", 1000
    metrics.finish(record)
    assert gate.writer.pending(token_hash=claims.token_hash) == (0, 0)  # waiting for the timer
    assert gate.holds.held(("token", claims.token_hash)) == (0, 1)  # so it still holds its round
    assert refused(402, gate.authorize, claims, route) == \
        "budget exhausted: this token spent 1000 of 1000 micro-USD"
    assert gate.holds.held(("token", claims.token_hash)) == (0, 0)
    metrics.timer.stop()


def test_requests_in_flight_hold_a_round_and_the_estimated_cost(root, gates):
    key = local_account(root)
    cfg, router = routes(root)
    metrics = Metrics()
    gate = gates(root, cfg, metrics)
    route = router.resolve("openai:gpt-4o")

    def begin(claims):
        record = metrics.begin("openai", "openai:gpt-4o", False)
        record.account, record.token_hash = claims.iss, claims.token_hash
        gate.authorize(claims, route, record)
        return record

    def end(record, cost, status=200):
        record.status, record.upstream, record.cost_micro_usd = status, "openai:gpt-4o", cost
        metrics.finish(record)

    rounds = gate.authenticate(cfg, token_for(key, budget_range={"type": "rounds", "count": 2}), "api")
    first, second = begin(rounds), begin(rounds)
    assert refused(402, gate.authorize, rounds, route) == "budget exhausted: this token has used all 2 rounds"
    end(first, 0, status=502)  # a failed request frees its round
    third = begin(rounds)
    end(second, 0)
    end(third, 0)
    assert refused(402, gate.authorize, rounds, route) == "budget exhausted: this token has used all 2 rounds"

    cost = gate.authenticate(cfg, token_for(key, budget=1000, exp=int(time.time()) + 900), "api")
    end(begin(cost), 400)  # settles the estimate for this token at 400
    held = begin(cost)  # 400 spent + 400 held
    assert gate.holds.held(("token", cost.token_hash)) == (400, 1)
    begin(cost)  # 400 + 800 held: 1200, over the budget for the next one
    assert refused(402, gate.authorize, cost, route) == "budget exhausted: this token spent 1200 of 1000 micro-USD"
    end(held, 100)
    assert gate.holds.held(("token", cost.token_hash)) == (400, 1)


def test_account_scope_budget_counts_every_token_of_the_issuer(root, gates):
    key = local_account(root)
    cfg, router = routes(root)
    metrics = Metrics()
    gate = gates(root, cfg, metrics)
    first = gate.authenticate(cfg, token_for(key), "api")
    finish(metrics, first, 700)
    second = gate.authenticate(cfg, token_for(key, budget=500, budget_scope="account"), "api")
    message = refused(402, gate.authorize, second, router.resolve("openai:gpt-4o"))
    assert message == "budget exhausted: this account spent 700 of 500 micro-USD"


def test_rounds_and_duration_ranges(root, gates):
    key = local_account(root)
    cfg, router = routes(root)
    metrics = Metrics()
    gate = gates(root, cfg, metrics)
    route = router.resolve("openai:gpt-4o")
    rounds = gate.authenticate(cfg, token_for(key, budget_range={"type": "rounds", "count": 2}), "api")
    finish(metrics, rounds, 0)
    finish(metrics, rounds, 0, status=502)  # failed calls are not rounds
    gate.authorize(rounds, route)
    finish(metrics, rounds, 0)
    assert refused(402, gate.authorize, rounds, route) == "budget exhausted: this token has used all 2 rounds"
    window = gate.authenticate(cfg, token_for(key, budget=100,
                                              budget_range={"type": "duration", "seconds": 3600}), "api")
    old = metrics.begin("openai", "openai:gpt-4o", False)
    old.account, old.token_hash, old.status, old.cost_micro_usd = window.iss, window.token_hash, 200, 5000
    old.started = time.time() - 7200  # spent before the window
    metrics.finish(old)
    # Unwritten rows count in full (they are normally seconds old), so let this one land first.
    wait_until(lambda: gate.writer.pending(token_hash=window.token_hash) == (0, 0), what="the flush")
    gate.authorize(window, route)
    finish(metrics, window, 100)
    assert refused(402, gate.authorize, window, route) == \
        "budget exhausted: this token spent 100 of 100 micro-USD in the last 3600 s"


def test_spend_rows_reach_the_database_and_anonymous_refusals_do_not(root, gates):
    key = local_account(root)
    cfg, _ = routes(root)
    metrics = Metrics()
    gate = gates(root, cfg, metrics)
    claims = gate.authenticate(cfg, token_for(key), "api")
    record = metrics.begin("responses", "alias", False)
    record.account, record.token_hash, record.upstream = claims.iss, claims.token_hash, "openai:gpt-4o"
    record.status, record.latency_ms, record.cost_micro_usd = 201, 12.7, 42
    record.usage = Usage(input=10, output=5, cache_read=4, cache_write=3, reasoning=2)
    metrics.finish(record)
    refusal = metrics.begin("anthropic", "x", False)
    refusal.status = 401
    metrics.finish(refusal)
    gate.close()
    rows = list(store.SpendLog.select().dicts().bind(gate.store.db))
    assert len(rows) == 1
    row = rows[0]
    assert abs(row.pop("time").replace(tzinfo=timezone.utc).timestamp() - record.started) < 0.001
    del row["id"]
    assert row == {"account": claims.iss, "token_hash": claims.token_hash, "model": "alias",
                   "upstream": "openai:gpt-4o", "protocol": "responses", "status": 201, "latency_ms": 12,
                   "input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 4, "cache_write_tokens": 3,
                   "reasoning_tokens": 2, "cost_micro_usd": 42, "requests": 1}


def test_closing_the_server_writes_the_spend_rows_the_metrics_have_not_folded_in(tmp_path):
    home = home_mod.resolve(home_dir=tmp_path)
    body = json.dumps({"model": "mock:echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with server.Server(home) as srv:
        srv.metrics.timer = gevent.get_hub().loop.timer(3600)  # a fold that waits past the close
        for _ in range(3):
            assert proxy.generate(srv, proxy.Incoming(protocols.get("openai"), body=body)).status == 200
        assert srv.metrics.timer.active  # their fold is still waiting
    db = store.Store(config.load(home).database_url)
    try:
        assert [(row["keys"], row["requests"]) for row in db.usage()] == [(("(none)", "mock:echo"), 3)]
    finally:
        db.close()

