"""`bitrouter keygen`, `keys` and `usage` through the CLI, checked against files and the database."""

import base64
import json
import re
import sqlite3
import stat
import time

import pytest
from conftest import run_cli

from bitrouter import accounts, store, tokens
from bitrouter import home as home_mod


def ok(home, *args):
    result = run_cli(home, *args)
    assert result.returncode == 0, result.stderr
    return result


def fails(home, *args) -> str:
    result = run_cli(home, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not result.stdout, result
    return lines[0][len("error: "):]


def payload(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.split(".")[1] + "==")


@pytest.fixture
def account(home):
    """A home with one generated, active account; returns its prefix."""
    out = ok(home, "account", "-g").stdout
    return re.search(r"prefix:  (\S+)", out).group(1)


def db_rows(home, sql):
    with sqlite3.connect(home / "bitrouter.db") as conn:
        return conn.execute(sql).fetchall()


def test_keygen_prints_a_token_the_account_can_verify(home, account):
    result = ok(home, "keygen", "--exp", "1h")
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    trusted = accounts.trusted_issuers(home_mod.at(home))
    claims = tokens.verify(token, trusted)
    assert claims.scope == "api" and claims.exp - claims.iat == 3600 and claims.models is None
    assert abs(claims.iat - time.time()) < 60
    assert "warning" not in result.stderr


def test_keygen_without_a_name_records_the_token_so_it_can_be_revoked(home, account):
    """An unnamed token used to be printed and forgotten: never listed, never revocable."""
    first = ok(home, "keygen")
    path = home / ".keys" / account / "tokens" / "token-1.jwt"
    assert first.stderr == (f"Saved as 'token-1' in {path}; revoke it with "
                            f"`bitrouter --home-dir {home} keys --rm token-1`\n"
                            "warning: this token never expires; mint tokens with --exp (e.g. --exp 30d) "
                            "unless it must outlive every rotation\n")
    second = ok(home, "keygen", "--exp", "30d").stdout.strip()
    listing = ok(home, "keys").stdout.splitlines()
    assert listing[0] == "  [0] token-1" and "never expires" in listing[1]
    assert listing[2] == "  [1] token-2"
    exp = json.loads(payload(second))["exp"]
    assert f"expires {time.strftime('%Y-%m-%d %H:%M', time.gmtime(exp))} UTC" in listing[3]
    rows = db_rows(home, "select name, token_hash from tokens order by name")
    assert rows == [("token-1", tokens.token_hash(first.stdout.strip())), ("token-2", tokens.token_hash(second))]
    ok(home, "keys", "--rm", "token-1")  # the hint above, run as printed
    assert ok(home, "keys", "--rm", second).stdout == "Removed token: token-2 (revoked)\n"  # by the token itself
    assert db_rows(home, "select name, revoked from tokens order by name") == [("token-1", 1), ("token-2", 1)]
    third = ok(home, "keygen", "--exp", "1h").stdout.strip()
    assert ok(home, "keys").stdout.startswith("  [0] token-1\n")  # numbering never reuses a live name
    (home / ".keys" / account / "tokens" / "token-1.jwt").unlink()  # lost from the list: still revocable
    assert ok(home, "keys", "--rm", third).stdout == "Revoked the token (it was not among the saved tokens)\n"
    assert tokens.token_hash(third) in {h for h, in db_rows(home, "select token_hash from tokens where revoked = 1")}


def test_keygen_claims_in_the_original_order(home, account):
    token = ok(home, "keygen", "--exp", "30d", "--models", "openai:*,default", "--budget", "2500000",
               "--budget-scope", "session", "--budget-range", "rounds:10").stdout.strip()
    body = payload(token).decode()
    assert list(json.loads(body)) == ["iss", "chain", "iat", "exp", "scope", "models", "budget",
                                      "budget_scope", "budget_range"]
    claims = json.loads(body)
    assert claims["exp"] - claims["iat"] == 30 * 86400
    assert claims["models"] == ["openai:*", "default"]
    assert claims["budget_range"] == {"type": "rounds", "count": 10}


def test_keygen_name_saves_file_and_record(home, account):
    result = ok(home, "keygen", "--exp", "1h", "--name", "laptop")
    token = result.stdout.strip()
    path = home / ".keys" / account / "tokens" / "laptop.jwt"
    assert result.stderr == (f"Saved as 'laptop' in {path}; revoke it with "
                             f"`bitrouter --home-dir {home} keys --rm laptop`\n")
    assert path.read_text() == token  # no trailing newline
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = db_rows(home, "select name, account, scope, token_hash, revoked, exp from tokens")
    claims = json.loads(payload(token))
    assert rows == [("laptop", account, "api", tokens.token_hash(token), 0, claims["exp"])]


def test_keygen_records_in_the_database_given_by_db(home, account, tmp_path):
    other = tmp_path / "elsewhere.db"
    ok(home, "--db", f"sqlite:///{other}", "keygen", "--name", "x")
    assert not (home / "bitrouter.db").exists()
    with sqlite3.connect(other) as conn:
        assert conn.execute("select name from tokens").fetchall() == [("x",)]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "a\\b", "", "x" * 101])
def test_keygen_rejects_unsafe_names(home, account, name):
    assert fails(home, "keygen", "--name", name).startswith(f'invalid token name "{name}"')
    assert list((home / ".keys" / account / "tokens").iterdir()) == []
    assert not (home / "escape.jwt").exists()


def test_keygen_refuses_to_overwrite_a_saved_name(home, account):
    first = ok(home, "keygen", "--name", "ci").stdout.strip()
    message = fails(home, "keygen", "--name", "ci")
    assert message == f'a token named "ci" already exists; remove it first with `bitrouter --home-dir {home} keys --rm ci`'
    assert (home / ".keys" / account / "tokens" / "ci.jwt").read_text() == first


@pytest.mark.parametrize("args, message", [
    (["--scope", "root"], 'invalid scope "root" — use "admin" or "api"'),
    (["--budget-scope", "team"], 'invalid budget scope "team" — use "session" or "account"'),
    (["--scope", "admin"], tokens.ADMIN_NEEDS_EXP),
    (["--scope", "admin", "--exp", "never"], tokens.ADMIN_NEEDS_EXP),
    (["--exp", "3600"], 'invalid expiration "3600": a bare number is ambiguous; give a unit (e.g. "3600s") or "never"'),
    (["--exp", "0m"], 'expiration "0m" is not in the future'),
    (["--exp", "2w"], 'unknown duration unit "w" in "2w" (use s/m/h/d/y)'),
    (["--budget-range", "rounds:x"], 'invalid round count: "x"'),
    (["--budget", "-5"], 'invalid budget "-5": give whole micro-USD (1 USD = 1000000)'),
    (["--chain", "base"], 'unsupported chain "base" — use "solana" (EVM signing is not available in this build)'),
])
def test_keygen_errors(home, account, args, message):
    assert fails(home, "keygen", *args) == message


def test_admin_token_with_exp(home, account):
    token = ok(home, "keygen", "--scope", "admin", "--exp", "5m").stdout.strip()
    claims = tokens.verify(token, accounts.trusted_issuers(home_mod.at(home)))
    assert claims.scope == "admin" and claims.exp - claims.iat == 300


def test_keys_listing_show_and_exact_name_over_prefix(home, account):
    assert ok(home, "keys").stdout == (f"No saved tokens for account {account}.\n"
                                       f"Run `bitrouter --home-dir {home} keygen --exp 30d` to create one.\n")
    ci = ok(home, "keygen", "--models", "openai:*,default", "--name", "ci").stdout.strip()
    ok(home, "keygen", "--scope", "admin", "--exp", "5m", "--name", "ci-prod")
    listing = ok(home, "keys").stdout.splitlines()
    assert listing[0] == "  [0] ci"
    assert listing[1] == "       scope=api  chain=solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp  never expires  models=openai:*,default"
    assert listing[2] == "  [1] ci-prod"
    assert re.fullmatch(r"       scope=admin  chain=\S+  expires \d{4}-\d\d-\d\d \d\d:\d\d UTC  all-models", listing[3])
    shown = ok(home, "keys", "--show", "ci").stdout  # exact name, though "ci-prod" shares it
    claims_text, raw = shown.split("\n\nRaw JWT:\n")
    assert raw == ci + "\n"
    assert claims_text == json.dumps(json.loads(payload(ci)), indent=2)
    assert ok(home, "keys", "--show", "1").stdout.endswith(
        (home / ".keys" / account / "tokens" / "ci-prod.jwt").read_text() + "\n")
    assert ok(home, "keys", "--show", "ci-p").stdout == ok(home, "keys", "--show", "1").stdout


def test_keys_errors(home, account):
    assert fails(home, "keys", "--show", "x") == "No saved tokens."
    ok(home, "keygen", "--name", "ci")
    ok(home, "keygen", "--name", "ci-prod")
    assert fails(home, "keys", "--rm", "c") == 'Ambiguous identifier "c" — matches 2 tokens. Be more specific.'
    assert fails(home, "keys", "--show", "zz") == 'No token matching "zz"'
    assert fails(home, "keys", "--show", "9") == 'Index 9 out of range (0..2), and no name starts with "9"'


def test_keys_rm_deletes_and_revokes(home, account):
    token = ok(home, "keygen", "--name", "ci").stdout.strip()
    kept = ok(home, "keygen", "--exp", "1h", "--name", "other").stdout.strip()  # other claims: another token
    assert ok(home, "keys", "--rm", "ci").stdout == "Removed token: ci (revoked)\n"
    assert not (home / ".keys" / account / "tokens" / "ci.jwt").exists()
    revoked = dict(db_rows(home, "select token_hash, revoked from tokens"))
    assert revoked == {tokens.token_hash(token): 1, tokens.token_hash(kept): 0}
    stamp = home / ".keys" / "revoked"
    assert stamp.is_file() and stat.S_IMODE(stamp.stat().st_mode) == 0o600
    with store.Store(home_mod.at(home).default_db_url) as db:
        assert db.revoked_hashes() == {tokens.token_hash(token)}
        with pytest.raises(tokens.AuthError, match="token revoked"):
            tokens.verify(token, accounts.trusted_issuers(home_mod.at(home)), revoked=db.revoked_hashes())


def test_keys_need_an_active_account(home):
    assert fails(home, "keys") == f"No active account. Run `bitrouter --home-dir {home} account -g` to generate one."


def test_usage_reports_spend_per_token_and_model(home, account):
    token = ok(home, "keygen", "--name", "ci").stdout.strip()
    assert ok(home, "usage").stdout.startswith("No recorded spend since ")
    url = home_mod.at(home).default_db_url
    writer = store.SpendWriter(url)
    common = {"token_hash": tokens.token_hash(token), "account": "acct", "model": "default"}
    writer.log({**common, "upstream": "openai:gpt-4o", "input_tokens": 1000, "output_tokens": 500,
                "cost_micro_usd": 7500})
    writer.log({**common, "upstream": "openai:gpt-4o", "input_tokens": 10, "output_tokens": 5,
                "cost_micro_usd": 75})
    writer.log({"token_hash": "f" * 64, "upstream": "anthropic:claude", "cost_micro_usd": 20})
    writer.log({"upstream": "mock:echo", "time": time.time() - 90 * 86400, "cost_micro_usd": 1})
    writer.close()
    lines = ok(home, "usage").stdout.splitlines()
    assert lines[0].startswith("Spend since ") and lines[0].endswith("(30d), by token:")
    assert re.fullmatch(r"  TOKEN\s+MODEL\s+REQUESTS\s+INPUT\s+OUTPUT\s+COST \(USD\)", lines[1])
    assert re.fullmatch(r"  ci\s+openai:gpt-4o\s+2\s+1010\s+505\s+0\.007575", lines[2])
    assert re.fullmatch(r"  ffffffffffff\s+anthropic:claude\s+1\s+0\s+0\s+0\.000020", lines[3])
    assert lines[4] == "  total: 0.007595 USD over 3 requests"
    everything = ok(home, "usage", "--since", "all", "--by", "model").stdout.splitlines()
    assert everything[0] == "Spend all time, by model:"
    assert re.fullmatch(r"  mock:echo\s+1\s+0\s+0\s+0\.000001", everything[-2])
    assert fails(home, "usage", "--by", "day") == 'invalid --by "day" — use token, model, account'
    assert fails(home, "usage", "--since", "yesterday") == 'invalid period format: "yesterday" (try "5m", "1h", "30d")'


def test_usage_of_two_homes_in_one_process_keeps_each_to_its_database(tmp_path, capsys):
    """As in a notebook: module functions take a home, and no database is bound process-wide."""
    first, second = home_mod.at(tmp_path / "a"), home_mod.at(tmp_path / "b")
    for h in (first, second):
        h.root.mkdir()
    writer = store.SpendWriter(first.default_db_url)
    writer.log({"token_hash": "f" * 64, "upstream": "mock:echo", "cost_micro_usd": 25})
    writer.close()
    tokens.usage_command(first)
    assert "mock:echo" in capsys.readouterr().out
    tokens.usage_command(second)
    assert capsys.readouterr().out.startswith("No recorded spend since ")
    tokens.usage_command(first)
    assert "mock:echo" in capsys.readouterr().out
