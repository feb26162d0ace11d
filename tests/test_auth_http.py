"""Access control through a real server on loopback, on every inbound route.

Tokens come from the CLI (`keygen`) or from an independent pynacl signer in this file.
"""

import base64
import hashlib
import hmac
import json
import re
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest
import requests
from conftest import BITROUTER, clean_env, free_port, run_cli, wait_until
from fakes import FakeUpstream, openai_chat
from google import genai
from google.genai import types
from nacl.signing import SigningKey

from bitrouter import accounts

CHAIN = accounts.SOLANA_CHAIN
MODEL = "mock:echo"
USER = {"role": "user", "content": "hello there"}

# (protocol, method, path, body) for every route that serves a model.
INFERENCE = [
    ("openai", "POST", "/v1/chat/completions", {"model": MODEL, "messages": [USER]}),
    ("openai", "POST", "/v1/chat/completions", {"model": MODEL, "messages": [USER], "stream": True}),
    ("openai", "POST", "/v1/responses", {"model": MODEL, "input": "hello there"}),
    ("openai", "POST", "/v1/responses/input_tokens", {"model": MODEL, "input": "hello there"}),
    ("anthropic", "POST", "/v1/messages", {"model": MODEL, "max_tokens": 32, "messages": [USER]}),
    ("anthropic", "POST", "/v1/messages", {"model": MODEL, "max_tokens": 32, "messages": [USER], "stream": True}),
    ("anthropic", "POST", "/v1/messages/count_tokens", {"model": MODEL, "messages": [USER]}),
    ("google", "POST", f"/v1beta/models/{MODEL}:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
    ("google", "POST", f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
     {"contents": [{"parts": [{"text": "hi"}]}]}),
    ("google", "POST", f"/v1beta/models/{MODEL}:countTokens", {"contents": [{"parts": [{"text": "hi"}]}]}),
    ("google", "POST", f"/v1/models/{MODEL}:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
]
LISTINGS = [("openai", "GET", "/v1/models", None), ("google", "GET", "/v1beta/models", None),
            ("google", "GET", f"/v1beta/models/{MODEL}", None)]
ADMIN = [("openai", "GET", "/admin/routes", None), ("openai", "GET", "/admin/metrics", None),
         ("openai", "POST", "/admin/reload", None)]
STYLES = ["bearer", "x-api-key", "x-goog-api-key", "query"]


def call(server, method, path, body=None, token=None, style="bearer"):
    headers, params = {}, {}
    if token and style == "bearer":
        headers["authorization"] = f"Bearer {token}"
    elif token and style == "query":
        params["key"] = token
    elif token:
        headers[style] = token
    return requests.request(method, server.url + path, json=body, headers=headers, params=params, timeout=30)


def error_of(protocol, resp) -> tuple:
    """(status word, message) from an error body in the protocol's own shape."""
    data = resp.json()
    if protocol == "anthropic":
        assert data["type"] == "error"
        return data["error"]["type"], data["error"]["message"]
    if protocol == "google":
        assert data["error"]["code"] == resp.status_code
        return data["error"]["status"], data["error"]["message"]
    return data["error"]["type"], data["error"]["message"]


KIND = {401: {"openai": "authentication_error", "anthropic": "authentication_error", "google": "UNAUTHENTICATED"},
        402: {"openai": "insufficient_quota", "anthropic": "billing_error", "google": "FAILED_PRECONDITION"},
        403: {"openai": "permission_error", "anthropic": "permission_error", "google": "PERMISSION_DENIED"}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def independent_token(key: SigningKey, header=None, **claims) -> str:
    """A token made here with pynacl and json, not with bitrouter.tokens."""
    body = {"iss": f"{CHAIN}:{accounts.b58encode(bytes(key.verify_key))}", "chain": CHAIN,
            "iat": int(time.time()), "scope": "api", **claims}
    head = b64(json.dumps(header or {"alg": "SOL_EDDSA", "typ": "JWT"}, separators=(",", ":")).encode())
    message = f"{head}.{b64(json.dumps(body, separators=(',', ':')).encode())}"
    return f"{message}.{b64(key.sign(message.encode()).signature)}"


def account_key(home) -> SigningKey:
    """Generate an account through the CLI and read its key back from master.json."""
    out = run_cli(home, "account", "-g").stdout
    prefix = re.search(r"prefix:  (\S+)", out).group(1)
    seed = json.loads((home / ".keys" / prefix / "master.json").read_text())["seed"]
    return SigningKey(base64.urlsafe_b64decode(seed + "="))


def keygen(home, *args) -> str:
    result = run_cli(home, "keygen", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


PRICED = {"providers": {"mock": {"models": {"echo": {"pricing": {"input": 1000, "output": 1000}}}}}}


# ---------------------------------------------------------------- every route


def test_every_route_refuses_a_missing_token_in_its_own_shape(home, start_server):
    account_key(home)
    server = start_server()
    assert requests.get(server.url + "/health").status_code == 200
    for protocol, method, path, body in INFERENCE + LISTINGS + ADMIN:
        resp = call(server, method, path, body)
        assert resp.status_code == 401, (path, resp.text)
        assert resp.headers["www-authenticate"] == 'Bearer realm="bitrouter"'
        kind, message = error_of(protocol, resp)
        assert kind == KIND[401][protocol], path
        assert message.startswith("missing token: send it as Authorization: Bearer"), path


def test_every_route_takes_every_credential_style(home, start_server):
    account_key(home)
    token = keygen(home)
    server = start_server()
    for protocol, method, path, body in INFERENCE + LISTINGS:
        for style in STYLES:
            resp = call(server, method, path, body, token, style)
            assert resp.status_code == 200, (path, style, resp.text)


def test_admin_routes_need_an_admin_token(home, start_server):
    account_key(home)
    api, admin = keygen(home), keygen(home, "--scope", "admin", "--exp", "5m")
    server = start_server()
    for protocol, method, path, body in ADMIN:
        resp = call(server, method, path, body, api)
        assert resp.status_code == 403, path
        assert error_of(protocol, resp) == ("permission_error", "this route needs an admin token (keygen --scope admin)")
        assert call(server, method, path, body, admin).status_code == 200, path
    for protocol, method, path, body in INFERENCE[:1]:
        assert call(server, method, path, body, admin).status_code == 200  # admin covers inference


def test_model_allowlist_on_every_inference_route(home, start_server):
    account_key(home)
    other = keygen(home, "--models", "openai:*")
    mock = keygen(home, "--models", "mock:*", "--exp", "1h")
    server = start_server()
    for protocol, method, path, body in INFERENCE:
        resp = call(server, method, path, body, other)
        assert resp.status_code == 403, (path, resp.text)
        assert error_of(protocol, resp) == (
            KIND[403][protocol], "model 'mock:echo' is not allowed for this token (allowed: openai:*)")
        assert call(server, method, path, body, mock).status_code == 200, path


def test_alias_is_allowed_by_its_name_or_narrowed_to_allowed_endpoints(home, start_server, fake_openai):
    account_key(home)
    cfg = {"providers": {"up": {"derives": "openai", "api_base": fake_openai.url + "/v1", "api_key": "k"}},
           "models": {"fast": {"endpoints": ["up:m0", MODEL]}}}
    by_name = keygen(home, "--models", "fast")
    by_endpoint = keygen(home, "--models", "mock:*")
    neither = keygen(home, "--models", "anthropic:*")
    server = start_server(cfg)
    body = {"model": "fast", "messages": [USER]}
    resp = call(server, "POST", "/v1/chat/completions", body, by_name)
    assert resp.status_code == 200 and resp.headers["x-bitrouter-upstream"] == "up:m0"
    resp = call(server, "POST", "/v1/chat/completions", body, by_endpoint)
    assert resp.status_code == 200 and resp.headers["x-bitrouter-upstream"] == MODEL
    assert len(fake_openai.received) == 1  # the narrowed route never touched the other endpoint
    assert call(server, "POST", "/v1/chat/completions", body, neither).status_code == 403


# ---------------------------------------------------------------- token checks over HTTP


def test_independent_tokens_and_their_failures(home, start_server):
    key = account_key(home)
    server = start_server()
    route = INFERENCE[0]

    def message(token):
        resp = call(server, route[1], route[2], route[3], token)
        if resp.status_code == 200:
            return 200
        assert resp.status_code == 401
        return error_of("openai", resp)[1]

    good = independent_token(key, exp=int(time.time()) + 60)
    assert message(good) == 200
    head, payload, sig = good.split(".")
    forged = b64(json.dumps({**json.loads(base64.urlsafe_b64decode(payload + "==")), "scope": "admin"},
                            separators=(",", ":")).encode())
    assert message(f"{head}.{forged}.{sig}") == "bad signature"
    flipped = bytearray(base64.urlsafe_b64decode(sig + "=="))
    flipped[5] ^= 0x80
    assert message(f"{head}.{payload}.{b64(bytes(flipped))}") == "bad signature"
    other_head = b64(b'{"typ":"JWT","alg":"SOL_EDDSA"}')
    assert message(f"{other_head}.{payload}.{sig}") == "bad signature"
    none_head = b64(b'{"alg":"none","typ":"JWT"}')
    assert message(f"{none_head}.{payload}.AAAA") == "unsupported token algorithm 'none': only SOL_EDDSA is accepted"
    hs_head = b64(b'{"alg":"HS256","typ":"JWT"}')
    mac = hmac.new(b"secret", f"{hs_head}.{payload}".encode(), hashlib.sha256).digest()
    assert message(f"{hs_head}.{payload}.{b64(mac)}") == \
        "unsupported token algorithm 'HS256': only SOL_EDDSA is accepted"
    expired = independent_token(key, iat=int(time.time()) - 600, exp=int(time.time()) - 300)
    assert message(expired).startswith("token expired at")
    stranger = independent_token(SigningKey(bytes(32)))
    assert message(stranger).startswith("untrusted issuer solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp:")
    assert message("not-a-token").startswith("malformed token")


def test_revocation_and_new_accounts_take_effect_at_once(home, start_server):
    server = start_server()
    route = INFERENCE[0]
    assert call(server, route[1], route[2], route[3]).status_code == 200  # no issuer yet: open
    assert "authentication is off (no trusted issuers yet; loopback only)" in server.output()
    account_key(home)
    assert call(server, route[1], route[2], route[3]).status_code == 401  # an account now exists
    token = keygen(home, "--name", "ci")
    assert call(server, route[1], route[2], route[3], token).status_code == 200
    assert call(server, route[1], route[2], route[3], token).status_code == 200  # cached
    assert run_cli(home, "keys", "--rm", "ci").returncode == 0
    resp = call(server, route[1], route[2], route[3], token)
    assert resp.status_code == 401 and error_of("openai", resp)[1] == "token revoked"


def test_reload_changes_trusted_issuers(home, start_server):
    account_key(home)
    admin = keygen(home, "--scope", "admin", "--exp", "5m")
    outsider = SigningKey(bytes([7] * 32))
    pubkey = accounts.b58encode(bytes(outsider.verify_key))
    server = start_server({"auth": {"trusted_issuers": [pubkey]}})
    token = independent_token(outsider)
    assert call(server, *INFERENCE[0][1:], token).status_code == 200
    server.write_config({"server": {"listen": f"127.0.0.1:{server.port}"}, "auth": {"trusted_issuers": []}})
    assert call(server, "POST", "/admin/reload", None, admin).status_code == 200
    resp = call(server, *INFERENCE[0][1:], token)
    assert resp.status_code == 401 and error_of("openai", resp)[1].startswith("untrusted issuer")


# ---------------------------------------------------------------- modes


def test_refuses_to_serve_open_on_a_public_address(home):
    (home / "bitrouter.yaml").write_text(f"server:\n  listen: 0.0.0.0:{free_port()}\n")
    result = run_cli(home, "serve")
    assert result.returncode == 1
    assert result.stderr.startswith("error: refusing to serve without authentication on 0.0.0.0:")
    assert len(result.stderr.splitlines()) == 1


def test_mode_on_without_issuers_refuses_everything(home, start_server):
    server = start_server({"auth": {"mode": "on"}})
    assert call(server, *INFERENCE[0][1:]).status_code == 401
    assert "no issuer is trusted: every request will be refused" in server.output()


def test_mode_open_ignores_tokens(home, start_server):
    account_key(home)
    server = start_server({"auth": {"mode": "open"}})
    assert call(server, *INFERENCE[0][1:]).status_code == 200
    assert call(server, *INFERENCE[0][1:], "garbage").status_code == 200
    assert "authentication is off (auth.mode open)" in server.output()


# ---------------------------------------------------------------- spend and budgets


def spend_rows(home):
    with sqlite3.connect(home / "bitrouter.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select * from spend_logs order by id")]


def test_budget_runs_out_mid_session_on_every_protocol(home, start_server):
    account_key(home)
    server = start_server(PRICED)
    billed = [r for r in INFERENCE if "count" not in r[2] and "input_tokens" not in r[2]]
    for i, (protocol, method, path, body) in enumerate(billed):
        token = keygen(home, "--budget", "1", "--exp", f"{3600 + i}s")  # a distinct token per route
        first = call(server, method, path, body, token)
        assert first.status_code == 200, (path, first.text)
        second = call(server, method, path, body, token)
        assert second.status_code == 402, (path, second.text)
        kind, message = error_of(protocol, second)
        assert kind == KIND[402][protocol]
        assert re.fullmatch(r"budget exhausted: this token spent \d+ of 1 micro-USD", message), message


def test_rounds_budget_range(home, start_server):
    account_key(home)
    server = start_server()
    token = keygen(home, "--budget-range", "rounds:2")
    for _ in range(2):
        assert call(server, *INFERENCE[0][1:], token).status_code == 200
    resp = call(server, *INFERENCE[0][1:], token)
    assert resp.status_code == 402
    assert error_of("openai", resp)[1] == "budget exhausted: this token has used all 2 rounds"


def test_concurrent_requests_on_a_fresh_rounds_token_get_exactly_its_rounds(home, start_server):
    """20 requests in flight at once on a rounds:3 token: each took a hold, so 3 pass, 17 get 402."""
    account_key(home)
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def slow(req):  # answers only once every admitted request is waiting upstream
        arrived.release()
        release.wait(20)
        return openai_chat(req)

    with FakeUpstream(slow) as fake:
        server = start_server({"providers": {"up": {"derives": "openai", "api_base": fake.url + "/v1",
                                                    "api_key": "k"}}})
        token = keygen(home, "--budget-range", "rounds:3")
        body = {"model": "up:gpt-4o", "messages": [USER]}
        with ThreadPoolExecutor(20) as pool:
            answers = [pool.submit(call, server, "POST", "/v1/chat/completions", body, token)
                       for _ in range(20)]
            for _ in range(3):
                assert arrived.acquire(timeout=20)
            wait_until(lambda: sum(a.done() for a in answers) == 17, 20, what="17 refusals")
            release.set()
            statuses = sorted(a.result().status_code for a in answers)
    assert statuses == [200] * 3 + [402] * 17
    assert len(fake.received) == 3


def test_concurrent_requests_are_each_logged_once_with_cost(home, start_server):
    account_key(home)
    token = keygen(home, "--name", "load")
    server = start_server(PRICED)
    routes = [r for r in INFERENCE if "count" not in r[2] and "input_tokens" not in r[2]]

    def one(i):
        protocol, method, path, body = routes[i % len(routes)]
        return call(server, method, path, body, token, STYLES[i % len(STYLES)]).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(80)))
    assert statuses == [200] * 80
    refused = call(server, *INFERENCE[0][1:], "bad-token")
    assert refused.status_code == 401
    assert server.stop() == 0  # a clean shutdown writes every queued row
    rows = spend_rows(home)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert sum(r["requests"] for r in rows) == 80 and {r["token_hash"] for r in rows} == {digest}
    assert all(r["status"] == 200 and r["upstream"] == MODEL and r["cost_micro_usd"] > 0 for r in rows)
    assert {r["protocol"] for r in rows} == {"openai", "responses", "anthropic", "google"}
    assert all(r["account"].startswith(CHAIN + ":") for r in rows)
    report = run_cli(home, "usage").stdout
    assert re.search(rf"  load\s+{MODEL}\s+80\s", report), report


def test_open_server_logs_anonymous_spend(home, start_server):
    server = start_server(PRICED)
    assert call(server, *INFERENCE[0][1:]).status_code == 200
    server.stop()
    rows = spend_rows(home)
    assert len(rows) == 1 and rows[0]["account"] is None and rows[0]["token_hash"] is None
    assert rows[0]["cost_micro_usd"] > 0
    line = next(line for line in server.output().splitlines() if " INFO request " in line)
    assert line.endswith(f" attempts=1 cost=${rows[0]['cost_micro_usd'] / 1e6:.6f}"), line  # each request's own


def test_unreachable_database_stops_the_server(home):
    env = clean_env(home, BITROUTER_DATABASE_URL="postgresql://bitrouter:hunter2@127.0.0.1:1/x")
    (home / "bitrouter.yaml").write_text(f"server:\n  listen: 127.0.0.1:{free_port()}\n")
    result = subprocess.run([BITROUTER, "--home-dir", str(home), "serve"], capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot open database postgresql://bitrouter:***@127.0.0.1:1/x")
    assert "hunter2" not in result.stderr + result.stdout


def test_official_sdks_use_the_token_as_their_api_key(home, start_server):
    account_key(home)
    token = keygen(home)
    server = start_server()
    reply = openai.OpenAI(base_url=server.url + "/v1", api_key=token).chat.completions.create(
        model=MODEL, messages=[USER])
    assert reply.choices[0].message.content == "hello there"
    message = anthropic.Anthropic(base_url=server.url, api_key=token).messages.create(
        model=MODEL, max_tokens=32, messages=[USER])
    assert message.content[0].text == "hello there"
    gemini = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=server.url))
    assert gemini.models.generate_content(model=MODEL, contents="hello there").text == "hello there"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong").messages.create(
            model=MODEL, max_tokens=32, messages=[USER])
