"""The operator's commands through the real CLI: status --json, logs, providers, models, doctor,
route, and what account -g and init do to a running server."""

import json
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BITROUTER, clean_env, free_port, run_cli, wait_until
from fakes import FakeUpstream, error, openai_chat

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(result, code=1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0][7:]


@pytest.fixture
def daemon(home):
    """A started daemon of `home` serving a mock alias; stopped at teardown."""
    port = free_port()
    (home / "bitrouter.yaml").write_text(yaml.safe_dump(
        {"server": {"listen": f"127.0.0.1:{port}"}, "models": {"echo": {"endpoints": ["mock:echo"]}}}))
    assert run_cli(home, "start").returncode == 0
    yield f"http://127.0.0.1:{port}"
    run_cli(home, "stop")


# ---------------------------------------------------------------- --home-dir


@pytest.mark.parametrize("command", ["status", "serve", "start", "keys", "init"])
def test_a_missing_home_dir_is_the_same_clear_error_for_every_command(tmp_path, command):
    missing = tmp_path / "typo"
    result = subprocess.run([BITROUTER, "--home-dir", str(missing), command], capture_output=True, text=True,
                            env=clean_env(tmp_path), timeout=30)
    assert one_line_error(result) == f"--home-dir {missing} does not exist; create it first (mkdir -p {missing})"
    assert not missing.exists()


# ---------------------------------------------------------------- status


def test_status_shows_auth_and_each_provider_with_a_masked_key(home):
    (home / ".env").write_text("OPENAI_API_KEY=sk-openai-secret-0123456789\n")
    (home / "bitrouter.yaml").write_text("providers: {acme: {derives: anthropic, api_key: 'ak-literal-0123456789'}}\n")
    result = run_cli(home, "status")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    at = lines.index("providers: acme, openai")
    assert lines[at + 1] == "           acme    anthropic  https://api.anthropic.com  key ak-l...6789 (bitrouter.yaml)"
    assert lines[at + 2] == ("           openai  openai     https://api.openai.com/v1  key sk-o...6789 "
                             "($OPENAI_API_KEY)")
    assert "secret" not in result.stdout and "literal" not in result.stdout
    run_cli(home, "account", "-g")
    auth = next(line for line in run_cli(home, "status").stdout.splitlines() if line.startswith("auth:"))
    assert auth == "auth:      tokens required (auth.mode auto, 1 trusted issuer(s))"


def test_status_json_and_a_broken_config_exits_1(home):
    report = json.loads(run_cli(home, "status", "--json").stdout)
    assert report["daemon"] == {"state": "stopped"} and report["problems"] == []
    assert report["auth"] == {"mode": "auto", "tokens_required": False, "active_account": None, "trusted_issuers": 0}
    (home / "bitrouter.yaml").write_text("models: {default: {endpoints: ['opnai:x']}}\n")
    broken = run_cli(home, "status", "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["problems"] == [
        f"{home}/bitrouter.yaml: models.default.endpoints[0].provider: unknown provider 'opnai' "
        "(did you mean 'openai'?)"]
    text = run_cli(home, "status")
    assert text.returncode == 1 and "problem:   " in text.stdout


def test_status_flags_an_alias_no_provider_can_serve(home):
    (home / "bitrouter.yaml").write_text("models: {default: {endpoints: ['openai:gpt-4o']}}\n")
    result = run_cli(home, "status")
    assert result.returncode == 1
    assert ("problem:   alias 'default' cannot be served: no key for openai (set OPENAI_API_KEY)"
            in result.stdout.splitlines())


# ---------------------------------------------------------------- logs


def test_logs_prints_the_tail_and_follows(home, daemon):
    requests.post(daemon + "/v1/chat/completions", json={"model": "echo", "messages": [
        {"role": "user", "content": "one"}]}, timeout=10)
    wait_until(lambda: "model=echo" in (home / "logs" / "bitrouter.log").read_text(), 10, what="the log line")
    tail = run_cli(home, "logs", "-n", "1")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 1 and "model=echo" in tail.stdout
    follower = subprocess.Popen([BITROUTER, "--home-dir", str(home), "logs", "-f", "--lines", "1"],
                                stdout=subprocess.PIPE, text=True, env=clean_env(home))
    try:
        assert "model=echo" in follower.stdout.readline()  # following has begun
        requests.post(daemon + "/v1/chat/completions", json={"model": "nope", "messages": []}, timeout=10)
        line = follower.stdout.readline()
        assert "model=nope" in line and "status=" in line
    finally:
        follower.terminate()
        follower.wait(10)


def test_logs_without_a_log_says_how_to_get_one(home):
    assert one_line_error(run_cli(home, "logs")) == (
        f"no server log yet at {home}/logs/bitrouter.log; `bitrouter --home-dir {home} start` or "
        f"`bitrouter --home-dir {home} serve` writes one")


# ---------------------------------------------------------------- providers and models


def test_providers_lists_the_registry_and_which_have_keys(home):
    result = run_cli(home, "providers", env=clean_env(home, DEEPSEEK_API_KEY="sk-deepseek-0123456789"))
    assert result.returncode == 0
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:] if line and line[0] != " "}
    assert rows["deepseek"][1:3] == ["openai", "DEEPSEEK_API_KEY"] and rows["deepseek"][-1] == "set"
    assert rows["anthropic"][1:3] == ["anthropic", "ANTHROPIC_API_KEY"] and rows["anthropic"][-1] == "-"
    from bitrouter import registry
    data = json.loads(run_cli(home, "providers", "--json").stdout)
    assert {"name": "openai", "protocol": "openai", "api_base": "https://api.openai.com/v1",
            "key_variable": "OPENAI_API_KEY", "models": len(registry.providers()["openai"]["models"]),
            "configured": False} in data


def test_models_shows_context_and_prices(home):
    result = run_cli(home, "models", "openai")
    assert result.returncode == 0
    row = next(line for line in result.stdout.splitlines() if line.startswith("openai:gpt-4o "))
    assert row.split()[1:] == ["128,000", "16,384", "$2.5", "$10", "text+image"]
    assert result.stdout.rstrip().endswith("models; prices in USD per million tokens.")
    assert one_line_error(run_cli(home, "models", "opnai")) == (
        f"unknown provider 'opnai' (did you mean 'openai'?); `bitrouter --home-dir {home} providers` lists them")
    keyed = run_cli(home, "models", env=clean_env(home, XAI_API_KEY="xai-0123456789"))
    assert {line.split(":")[0] for line in keyed.stdout.splitlines()[1:] if ":" in line.split(" ")[0]} == {"xai"}


def test_docs_providers_md_is_generated_from_the_registry_and_current():
    from bitrouter import catalog
    assert (ROOT / "docs" / "providers.md").read_text() == catalog.markdown(), \
        "docs/providers.md is stale: run `python scripts/providers_doc.py`"
    assert "| `openai:gpt-4o` | 128,000 | 16,384 | $2.5 | $10 | text+image |" in catalog.markdown()


# ---------------------------------------------------------------- doctor


def test_doctor_checks_each_key_with_a_cheap_call(home):
    with FakeUpstream(lambda req: {"/v1/models": ok_models}.get(req.path, openai_chat)(req)) as good, \
            FakeUpstream(lambda req: error(401, "Incorrect API key")) as bad:
        (home / "bitrouter.yaml").write_text(yaml.safe_dump({
            "server": {"listen": f"127.0.0.1:{free_port()}"},
            "providers": {"good": {"api_protocol": "openai", "api_base": good.url + "/v1", "api_key": "gk-0123456789"},
                          "bad": {"api_protocol": "openai", "api_base": bad.url + "/v1", "api_key": "bk-0123456789"}}}))
        result = run_cli(home, "doctor")
        assert [r.path for r in good.received] == ["/v1/models"]
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok ") and "key good" in line and "key accepted (1 model listed)" in line
               for line in lines), lines
    assert any(line.startswith("FAIL") and "key bad" in line and "key rejected (HTTP 401" in line for line in lines)
    assert any(line.startswith("ok ") and " port " in line and "is free" in line for line in lines)
    assert lines[-1] == "1 problem found"
    assert "gk-0123456789" not in result.stdout and "bk-0123456789" not in result.stdout


def ok_models(req):
    from fakes import Reply
    return Reply(body={"object": "list", "data": [{"id": "m1", "object": "model"}]})


def test_doctor_sees_a_taken_port_and_a_running_daemon(home, daemon):
    result = run_cli(home, "doctor", "--offline")
    assert result.returncode == 0, result.stdout
    assert "is served by this home's server" in result.stdout and "running" not in result.stdout.split("daemon")[0]
    other = home / "other"
    other.mkdir()
    (other / "bitrouter.yaml").write_text(f"server: {{listen: '{daemon[7:]}'}}\n")
    taken = run_cli(other, "doctor", "--offline")
    assert taken.returncode == 1 and f"cannot listen on {daemon[7:]}" in taken.stdout


# ---------------------------------------------------------------- route


def test_route_add_list_rm_on_the_running_server(home, daemon):
    added = run_cli(home, "route", "add", "fast", "mock:echo", "mock:other", "--strategy", "load_balance")
    assert added.stdout == "route fast -> mock:echo > mock:other (load_balance); stored in the database, so it survives restarts\n"
    listing = run_cli(home, "route", "list").stdout.splitlines()
    assert listing == ["echo  alias    priority      mock:echo", "fast  dynamic  load_balance  mock:echo > mock:other"]
    assert requests.post(daemon + "/v1/chat/completions", json={"model": "fast", "messages": [
        {"role": "user", "content": "x"}]}, timeout=10).status_code == 200
    assert run_cli(home, "route", "rm", "fast").stdout == "route fast removed\n"
    assert one_line_error(run_cli(home, "route", "rm", "fast")) == "no dynamic route named 'fast'"
    assert one_line_error(run_cli(home, "route", "add", "x", "nosuch:m")) == "endpoints[0].provider: unknown provider 'nosuch'"
    assert one_line_error(run_cli(home, "route", "frob")) == "unknown route action 'frob': use list, add or rm"


def test_route_works_once_tokens_are_required(home, daemon):
    run_cli(home, "account", "-g")
    assert run_cli(home, "route", "add", "x", "mock:echo").returncode == 0  # the owner's admin token
    assert requests.get(daemon + "/admin/routes", timeout=10).status_code == 401


# ---------------------------------------------------------------- account -g and init on a running server


def test_account_g_warns_that_the_open_server_now_wants_tokens(home, daemon):
    result = run_cli(home, "account", "-g")
    assert result.returncode == 0
    assert result.stderr.startswith(f"warning: the server running on {daemon} (pid ")
    assert "refuses every client that sends no token" in result.stderr
    assert f"Next: mint a token for your clients with `bitrouter --home-dir {home} keygen --exp 30d`" in result.stdout
    assert requests.get(daemon + "/v1/models", timeout=10).status_code == 401
    token = run_cli(home, "keygen", "--exp", "1h").stdout.strip()
    assert requests.get(daemon + "/v1/models", headers={"authorization": f"Bearer {token}"}, timeout=10).ok
    second = run_cli(home, "account", "-g")
    assert "warning" not in second.stderr  # tokens were already required


def test_init_reloads_the_running_server(home, daemon):
    reply = requests.post(daemon + "/v1/chat/completions", json={"model": "deepseek:deepseek-chat", "messages": [
        {"role": "user", "content": "x"}]}, timeout=10)
    assert reply.status_code == 503 and "DEEPSEEK_API_KEY" in reply.json()["error"]["message"]
    env = clean_env(home, DEEPSEEK_API_KEY="sk-deepseek-0123456789")
    result = run_cli(home, "init", "--provider", "deepseek", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "A server of this home is running (pid " in result.stdout and "configuration reloaded" in result.stdout
    assert "Start the server" not in result.stdout
    models = requests.get(daemon + "/v1/models", timeout=10).json()["data"]
    assert any(m["id"].startswith("deepseek:") for m in models)


# ---------------------------------------------------------------- stop


def test_stop_says_what_it_waits_for(home):
    import threading
    gate = threading.Event()

    def slow(req):
        from fakes import Reply, chat_stream
        return Reply(frames=chat_stream(), gate=gate)

    with FakeUpstream(slow) as fake:
        port = free_port()
        (home / "bitrouter.yaml").write_text(yaml.safe_dump({
            "server": {"listen": f"127.0.0.1:{port}"},
            "providers": {"up": {"api_protocol": "openai", "api_base": fake.url + "/v1", "api_key": "k-0123456789"}}}))
        assert run_cli(home, "start").returncode == 0
        stream = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", stream=True, timeout=30, json={
            "model": "up:m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        next(stream.iter_content(None))
        stopper = subprocess.Popen([BITROUTER, "--home-dir", str(home), "stop"], stdout=subprocess.PIPE, text=True,
                                   env=clean_env(home))
        first = stopper.stdout.readline()
        assert first.startswith("stopping the server (pid ") and "waiting for 1 running request(s) to finish, up to" in first
        gate.set()
        assert stopper.wait(30) == 0
        assert stopper.stdout.read().startswith("bitrouter daemon stopped")
        stream.close()
