"""What a new user meets first, through a real server: --listen, bare model names, base URL slips, DNS errors."""

import signal
import subprocess

import pytest
import requests

from conftest import BITROUTER, clean_env, free_port, run_cli, wait_until
from fakes import FakeUpstream, openai_chat


def chat(url, model, path="/v1/chat/completions", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return requests.post(url + path, json=body, timeout=30, **kw)


def healthy(url):
    try:
        return requests.get(url + "/health", timeout=1).ok
    except requests.ConnectionError:
        return False


# ---------------------------------------------------------------- --listen and BITROUTER_LISTEN


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_listens_where_told_without_editing_yaml(home, how):
    (home / "bitrouter.yaml").write_text("server: {listen: '127.0.0.1:1'}\n")  # never used
    port = free_port()
    args, env = ["serve"], clean_env(home)
    if how == "flag":
        args += ["--listen", f"127.0.0.1:{port}"]
    else:
        env["BITROUTER_LISTEN"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen([BITROUTER, "--home-dir", str(home), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), 20, what="the server on the chosen port")
        assert chat(f"http://127.0.0.1:{port}", "mock:echo").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_start_listen_reaches_the_daemon_and_a_bad_address_is_one_line(home):
    port = free_port()
    result = run_cli(home, "start", "--listen", f"127.0.0.1:{port}")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith(f"on http://127.0.0.1:{port}\n")
        status = run_cli(home, "status").stdout
        assert f"listen:    127.0.0.1:{port}" not in status  # status without --listen shows the config...
        assert f"url:       http://127.0.0.1:{port}" in status  # ...and the daemon's real address
    finally:
        run_cli(home, "stop")
    bad = run_cli(home, "serve", "--listen", "nowhere")
    assert (bad.returncode, bad.stderr) == (1, "error: --listen: expected host:port, got 'nowhere'\n")
    env = clean_env(home, BITROUTER_LISTEN="nowhere")
    assert run_cli(home, "status", env=env).stdout.count("problem:   BITROUTER_LISTEN: expected host:port") == 1


# ---------------------------------------------------------------- bare model names


@pytest.fixture
def fake():
    with FakeUpstream(openai_chat) as upstream:
        yield upstream


def two_providers(fake, **routing):
    """openai and opencode-zen, both keyed and pointed at one fake; opencode-zen and anthropic
    both list claude-sonnet-4-5, only openai lists gpt-4o."""
    cfg = {"providers": {"openai": {"api_base": fake.url + "/v1", "api_key": "key-openai-0123"},
                         "anthropic": {"api_protocol": "openai", "api_base": fake.url + "/v1",
                                       "api_key": "key-anthropic-0123"},
                         "opencode-zen": {"api_protocol": "openai", "api_base": fake.url + "/v1",
                                          "api_key": "key-zen-0123"}}}
    if routing:
        cfg["routing"] = routing
    return cfg


def test_a_bare_model_id_goes_to_the_one_provider_that_lists_it(start_server, fake):
    server = start_server(two_providers(fake))
    reply = chat(server.url, "gpt-4o")
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-bitrouter-upstream"] == "openai:gpt-4o"
    assert fake.received[-1].body["model"] == "gpt-4o"
    assert fake.received[-1].headers["authorization"] == "Bearer key-openai-0123"


def test_a_bare_model_id_several_providers_list_is_a_404_naming_the_choices(start_server, fake):
    server = start_server(two_providers(fake))
    reply = chat(server.url, "claude-sonnet-4-5")
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == (
        "model 'claude-sonnet-4-5' is offered by several configured providers; ask for one of "
        "anthropic:claude-sonnet-4-5, opencode-zen:claude-sonnet-4-5, or add an alias for it under `models:`")
    anthropic = requests.post(server.url + "/v1/messages", json={
        "model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert anthropic.status_code == 404 and anthropic.json()["type"] == "error"  # in the caller's shape
    assert fake.received == []


def test_bare_model_ids_can_be_switched_off(start_server, fake):
    server = start_server(two_providers(fake, bare_models="off"))
    reply = chat(server.url, "gpt-4o")
    assert reply.status_code == 404 and "unknown model 'gpt-4o'" in reply.json()["error"]["message"]


def test_an_alias_wins_over_a_bare_catalog_id(start_server, fake):
    cfg = two_providers(fake)
    cfg["models"] = {"gpt-4o": {"endpoints": ["opencode-zen:other"]}}
    server = start_server(cfg)
    assert chat(server.url, "gpt-4o").headers["x-bitrouter-upstream"] == "opencode-zen:other"


# ---------------------------------------------------------------- base URL slips


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/v1/chat/completions"])
def test_openai_paths_without_or_with_a_doubled_v1_are_served(start_server, path):
    server = start_server({})
    reply = chat(server.url, "mock:echo", path=path)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "hi"


@pytest.mark.parametrize("path", ["/messages", "/v1/v1/messages"])
def test_anthropic_paths_without_or_with_a_doubled_v1_are_served(start_server, path):
    server = start_server({})
    reply = requests.post(server.url + path, json={"model": "mock:echo", "max_tokens": 10,
                                                   "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert reply.status_code == 200 and reply.json()["content"][0]["text"] == "hi"
    assert requests.get(server.url + "/models", timeout=10).json()["object"] == "list"


def test_an_unknown_path_names_the_right_base_url(start_server):
    server = start_server({})
    reply = requests.post(server.url + "/api/chat", json={}, timeout=10)
    assert reply.status_code == 404
    assert reply.json()["error"]["message"].endswith(
        f"(POST /api/chat is not served; point OpenAI and Anthropic clients at {server.url}/v1, "
        f"Gemini clients at {server.url})")


# ---------------------------------------------------------------- upstream wording


def test_a_host_that_does_not_resolve_is_a_502_not_a_timeout(start_server):
    server = start_server({"providers": {"nowhere": {"api_protocol": "openai", "api_key": "k-0123456789",
                                                     "api_base": "http://no-such-host.invalid/v1"}}})
    reply = chat(server.url, "nowhere:m")
    assert reply.status_code == 502, reply.text
    assert "cannot resolve host no-such-host.invalid" in reply.json()["error"]["message"]
