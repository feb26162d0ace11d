"""`bitrouter init`: the wizard driven in a real pseudo-terminal, and its scripted form.

Every run uses a temporary BitRouter home and a temporary $HOME, with the developer's keys
stripped from the environment. Each step waits for the prompt text (pexpect expect with a
timeout) before typing, the way a person would.
"""

import os
import stat

import pexpect
import pytest
import yaml

from bitrouter import config, wizard
from bitrouter import home as home_mod
from conftest import BITROUTER, clean_env, run_cli
from fakes import FakeUpstream, Reply, error

DOWN, SPACE, ENTER, BACKSPACE, TAB, CTRL_C = "\x1b[B", " ", "\r", "\x7f", "\t", "\x03"

OPENAI_KEY = "sk-openai-secret-1111222233334444"
ANTHROPIC_KEY = "sk-ant-secret-5555666677778888"
CUSTOM_KEY = "tg-custom-secret-99990000aaaabbbb"

EXISTING_YAML = """\
# My hand-written notes: this comment cannot survive a YAML rewrite.
server:
  listen: "127.0.0.1:7000"
  drain_timeout: 5
routing:
  cooldown_seconds: 9
providers:
  mock: {}
  openai:
    api_key: "${OPENAI_API_KEY}"
    default_headers: {X-Team: infra}
models:
  default:
    strategy: priority
    endpoints: [{provider: mock, model_id: echo}]
  fast:
    endpoints: ["mock:echo"]
"""

EXISTING_ENV = """\
# my keys
OPENAI_API_KEY=sk-old-key-000000000000
UNRELATED_SETTING=keep-me
"""


class Wizard:
    """`bitrouter --home-dir HOME [args] init` in a pseudo-terminal, with a transcript."""

    def __init__(self, home, user, *args, **env):
        self.child = pexpect.spawn(
            BITROUTER, ["--home-dir", str(home), "init", *args], encoding="utf-8", timeout=15,
            dimensions=(30, 120), env=clean_env(user, TERM="xterm", **env))
        self.transcript = []
        self.child.logfile_read = self

    def write(self, text):  # pexpect's logfile interface: keep everything the terminal showed
        self.transcript.append(text)

    def flush(self):
        pass

    @property
    def output(self) -> str:
        return "".join(self.transcript)

    def see(self, text: str) -> None:
        self.child.expect_exact(text)

    def answer(self, prompt: str, keys: str) -> None:
        self.see(prompt)
        self.child.send(keys)

    def finish(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def user(tmp_path):
    """A throwaway $HOME, so nothing can touch the real ~."""
    path = tmp_path / "user"
    path.mkdir()
    return path


def load(home, **paths):
    """What the server would load from these files alone (no process environment)."""
    return config.load(home_mod.resolve(home_dir=home, environ={}, **paths), environ={})


def raw_yaml(path):
    return yaml.safe_load(path.read_text())


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(folder):
    """Every file under a folder with its bytes and mode, to prove nothing changed."""
    return {p: (p.read_bytes(), mode(p)) for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- interactive flows


def test_fresh_setup_writes_config_env_and_default_alias(home, user):
    w = Wizard(home, user)
    w.answer("Providers to set up", SPACE + ENTER)  # OpenAI is the first row
    w.answer("OpenAI (openai) API key (OPENAI_API_KEY; Enter skips)", OPENAI_KEY + ENTER)
    w.answer("Add a custom OpenAI-, Anthropic- or Gemini-compatible provider?", "n" + ENTER)
    w.answer("Check the keys now", "n" + ENTER)
    w.answer("Set up the `default` alias", "y" + ENTER)
    w.answer("Model on openai for `default`", "gpt-9" + ENTER)  # not in the catalog
    w.see("gpt-9 is not in openai's model list")
    w.answer("Use gpt-9 anyway?", "n" + ENTER)
    w.answer("Model on openai for `default`", "gpt-4o-mini-2024" + TAB + ENTER)
    w.answer("Listen address", ENTER)
    w.see("key sk-o...4444")
    w.answer("Write these files?", "y" + ENTER)
    assert w.finish() == 0
    assert OPENAI_KEY not in w.output

    cfg = load(home)
    assert cfg.providers["openai"].api_key == OPENAI_KEY
    assert [e.label for e in cfg.models["default"].endpoints] == ["openai:gpt-4o-mini-2024-07-18"]
    assert raw_yaml(home / "bitrouter.yaml")["providers"] == {"openai": {"api_key": "${OPENAI_API_KEY}"}}
    assert f"OPENAI_API_KEY={OPENAI_KEY}\n" in (home / ".env").read_text()
    assert mode(home / ".env") == 0o600
    assert not list(home.glob("*.bak-*"))  # nothing existed, so nothing to back up
    assert not wizard.needs_setup(home_mod.at(home))


def test_detected_keys_are_shown_masked_and_preselected(home, user):
    w = Wizard(home, user, OPENAI_API_KEY=OPENAI_KEY, ANTHROPIC_API_KEY=ANTHROPIC_KEY)
    w.see("ANTHROPIC_API_KEY = sk-a...8888")
    w.see("OPENAI_API_KEY = sk-o...4444")
    w.see("[X] OpenAI (openai) - key in environment")
    w.see("[X] Anthropic (anthropic) - key in environment")
    w.answer("Search all", ENTER)
    w.answer("Use OPENAI_API_KEY from your environment (sk-o...4444)?", "y" + ENTER)
    w.answer("Use ANTHROPIC_API_KEY from your environment (sk-a...8888)?", "y" + ENTER)
    w.answer("Add a custom", "n" + ENTER)
    w.answer("Check the keys now", "n" + ENTER)
    w.answer("Set up the `default` alias", "n" + ENTER)
    w.answer("Listen address", ENTER)
    w.answer("Write these files?", ENTER)  # the default is yes
    assert w.finish() == 0
    assert OPENAI_KEY not in w.output and ANTHROPIC_KEY not in w.output

    env = (home / ".env").read_text()
    assert f"OPENAI_API_KEY={OPENAI_KEY}" in env and f"ANTHROPIC_API_KEY={ANTHROPIC_KEY}" in env
    assert load(home).configured_providers() == ["anthropic", "openai"]


def test_custom_provider_with_invalid_answers_reasked_and_key_checked(home, user):
    def anthropic_models(req):
        if req.headers.get("x-api-key") == CUSTOM_KEY:
            return Reply(body={"data": [{"id": "kimi-k2"}, {"id": "kimi-large"}]})
        return error(401)

    with FakeUpstream(anthropic_models) as fake:
        w = Wizard(home, user)
        w.answer("Providers to set up", ENTER)  # no built-in provider
        w.answer("Add a custom", "y" + ENTER)
        w.answer("Name for the custom provider", "my llm" + ENTER)
        w.see("names cannot contain ':', '/' or spaces")
        w.child.send(BACKSPACE * 6 + "a:b" + ENTER)
        w.see("names cannot contain ':', '/' or spaces")
        w.child.send(BACKSPACE * 3 + "OpenAI" + ENTER)
        w.see("'OpenAI' is already a provider")
        w.child.send(BACKSPACE * 6 + "moonshot" + ENTER)
        w.answer("API that moonshot speaks", DOWN + ENTER)  # Anthropic-compatible
        w.answer("Base URL of moonshot", "ftp://example.com" + ENTER)
        w.see("enter an http:// or https:// URL")
        w.child.send(BACKSPACE * 17 + fake.url + "/" + ENTER)
        w.answer("moonshot API key (MOONSHOT_API_KEY; Enter skips)", CUSTOM_KEY + ENTER)
        w.see(f"-> moonshot: derives anthropic, {fake.url}, key in MOONSHOT_API_KEY")
        w.answer("Add a custom", "n" + ENTER)
        w.answer("Check the keys now", "y" + ENTER)
        w.see("✓ moonshot: key accepted (2 models listed)")
        w.answer("Set up the `default` alias", "y" + ENTER)
        w.answer("Model on moonshot", "kimi-l" + TAB + ENTER)  # completes from the live list
        w.answer("Listen address", "localhost" + ENTER)
        w.see("expected host:port")
        w.child.send("localhost:8999" + ENTER)  # the rejected answer was cleared for the next try
        w.answer("Write these files?", "y" + ENTER)
        assert w.finish() == 0

    assert [(r.path, r.headers.get("anthropic-version")) for r in fake.received] == \
        [("/v1/models", "2023-06-01")]
    assert raw_yaml(home / "bitrouter.yaml")["providers"]["moonshot"] == {
        "derives": "anthropic", "api_base": fake.url, "env_prefix": "MOONSHOT",
        "api_key": "${MOONSHOT_API_KEY}"}
    cfg = load(home)
    assert (cfg.providers["moonshot"].api_protocol, cfg.providers["moonshot"].api_key) == \
        ("anthropic", CUSTOM_KEY)
    assert [e.label for e in cfg.models["default"].endpoints] == ["moonshot:kimi-large"]
    assert cfg.listen == "localhost:8999"
    assert CUSTOM_KEY not in w.output


def test_key_check_reports_a_rejected_key_and_accepts_a_new_one(home, user):
    good, bad = "sk-good-key-0123456789abcdef", "sk-bad-key-0123456789abcdef"

    def models(req):
        if req.headers.get("authorization") == f"Bearer {good}":
            return Reply(body={"data": [{"id": "fake-small"}, {"id": "fake-large"}]})
        return error(401, f"Incorrect API key provided: {bad}")  # upstream echoes the key

    with FakeUpstream(models) as fake:
        w = Wizard(home, user, OPENAI_BASE_URL=fake.url + "/v1")
        w.answer("Providers to set up", SPACE + ENTER)
        w.answer("OpenAI (openai) API key", bad + ENTER)
        w.answer("Add a custom", "n" + ENTER)
        w.answer("Check the keys now", "y" + ENTER)
        w.see("✗ openai: key rejected (HTTP 401: Incorrect API key provided: sk-b...cdef)")
        w.answer("Enter the openai key again?", "y" + ENTER)
        w.answer("openai API key (OPENAI_API_KEY; Enter keeps the current one)", good + ENTER)
        w.see("✓ openai: key accepted (2 models listed)")
        w.answer("Set up the `default` alias", "y" + ENTER)
        w.answer("Model on openai", "fake-small" + ENTER)
        w.answer("Listen address", ENTER)
        w.answer("Write these files?", "y" + ENTER)
        assert w.finish() == 0

    assert [r.path for r in fake.received] == ["/v1/models", "/v1/models"]
    assert bad not in w.output and good not in w.output
    env = (home / ".env").read_text()
    assert f"OPENAI_API_KEY={good}" in env and bad not in env


def test_search_step_and_path_overrides(home, user, tmp_path):
    conf, env = tmp_path / "etc" / "router.yaml", tmp_path / "secrets" / "router.env"
    w = Wizard(home, user, "--config-file", str(conf), "--env-file", str(env))
    w.see(f"config: {conf}")
    w.see(f"env:    {env}")
    w.answer("Providers to set up", DOWN * 4 + SPACE + ENTER)  # "Search all ... providers"
    w.answer("Search providers", "zzz" + ENTER)
    w.see("no provider matches 'zzz'")
    w.child.send(BACKSPACE * 3 + "mock" + ENTER)
    w.answer("Providers matching 'mock'", SPACE + ENTER)
    w.answer("Search for more providers?", "y" + ENTER)
    w.answer("Search providers", "anthro" + ENTER)
    w.answer("Providers matching 'anthro'", SPACE + ENTER)
    w.answer("Search for more providers?", "n" + ENTER)
    w.answer("Anthropic (anthropic) API key", ANTHROPIC_KEY + ENTER)
    w.answer("Add a custom", "n" + ENTER)
    w.answer("Check the keys now", "n" + ENTER)
    w.answer("Set up the `default` alias", "y" + ENTER)
    w.answer("Model on anthropic", ENTER)  # skipped
    w.answer("Model on mock", "echo" + ENTER)
    w.answer("Listen address", ENTER)
    w.answer("Write these files?", "y" + ENTER)
    assert w.finish() == 0

    assert not (home / "bitrouter.yaml").exists() and not (home / ".env").exists()
    assert mode(env) == 0o600 and mode(env.parent) == 0o700
    cfg = load(home, config_file=conf, env_file=env)
    assert cfg.providers["anthropic"].api_key == ANTHROPIC_KEY
    assert [e.label for e in cfg.models["default"].endpoints] == ["mock:echo"]


def test_merge_keeps_unrelated_settings_and_env_lines(home, user):
    (home / "bitrouter.yaml").write_text(EXISTING_YAML)
    (home / ".env").write_text(EXISTING_ENV)
    os.chmod(home / ".env", 0o644)
    w = Wizard(home, user)
    w.see("Existing configuration: providers openai; aliases default, fast.")
    w.see("Providers to set up")
    w.answer("OpenAI (openai) - configured", SPACE + DOWN + SPACE + ENTER)  # and Anthropic
    w.answer("Keep the OpenAI (openai) key already in .env (sk-o...0000)?", "n" + ENTER)
    w.answer("OpenAI (openai) API key", OPENAI_KEY + ENTER)
    w.answer("Anthropic (anthropic) API key", ANTHROPIC_KEY + ENTER)
    w.answer("Add a custom", "n" + ENTER)
    w.answer("Check the keys now", "n" + ENTER)
    w.answer("Replace the `default` alias (now mock:echo)?", "y" + ENTER)
    w.answer("Model on openai", "gpt-4o" + ENTER)
    w.answer("Model on anthropic", "claude-sonnet-4-5" + ENTER)
    w.answer("Listen address (host:port; Enter keeps 127.0.0.1:7000)", ENTER)
    w.see("(merged; backup bitrouter.yaml.bak-")
    w.answer("Write these files?", "y" + ENTER)
    w.see("Your previous config is saved as")
    assert w.finish() == 0

    backups = list(home.glob("bitrouter.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == EXISTING_YAML
    tree = raw_yaml(home / "bitrouter.yaml")
    assert tree["server"] == {"listen": "127.0.0.1:7000", "drain_timeout": 5}
    assert tree["routing"] == {"cooldown_seconds": 9}
    assert tree["providers"]["mock"] == {}
    assert tree["providers"]["openai"] == {"api_key": "${OPENAI_API_KEY}",
                                           "default_headers": {"X-Team": "infra"}}
    assert tree["models"]["fast"] == {"endpoints": ["mock:echo"]}
    assert [e.label for e in load(home).models["default"].endpoints] == \
        ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"]
    lines = (home / ".env").read_text().splitlines()
    assert lines == ["# my keys", f"OPENAI_API_KEY={OPENAI_KEY}", "UNRELATED_SETTING=keep-me",
                     f"ANTHROPIC_API_KEY={ANTHROPIC_KEY}"]
    assert mode(home / ".env") == 0o600


@pytest.mark.parametrize("where", ["checkbox", "key", "custom name", "final no"])
def test_cancel_writes_nothing(home, user, where):
    (home / "bitrouter.yaml").write_text(EXISTING_YAML)
    (home / ".env").write_text(EXISTING_ENV)
    os.chmod(home / ".env", 0o600)
    before = snapshot(home)
    w = Wizard(home, user)
    w.see("Providers to set up")
    if where == "checkbox":
        w.child.send(SPACE + CTRL_C)
    else:
        w.child.send(DOWN + SPACE + ENTER)
        w.answer("Anthropic (anthropic) API key", "sk-half-typed")
        if where == "key":
            w.child.send(CTRL_C)
        else:
            w.child.send(ENTER)
            w.answer("Add a custom", "y" + ENTER)
            if where == "custom name":
                w.answer("Name for the custom provider", "half" + CTRL_C)
            else:
                w.child.send(BACKSPACE * 4 + "later" + ENTER)
                w.answer("API that later speaks", ENTER)
                w.answer("Base URL of later", "https://later.example/v1" + ENTER)
                w.answer("later API key", ENTER)
                w.answer("Add a custom", "n" + ENTER)
                w.answer("Check the keys now", "n" + ENTER)
                w.answer("Replace the `default` alias", "n" + ENTER)
                w.answer("Listen address", ENTER)
                w.answer("Write these files?", "n" + ENTER)
    w.see("Setup cancelled; nothing was written.")
    assert w.finish() == 1
    assert snapshot(home) == before


def test_scripted_form_on_a_terminal_asks_before_writing(home, user):
    w = Wizard(home, user, "--provider", "openai", OPENAI_API_KEY=OPENAI_KEY)
    w.see("key sk-o...4444 from OPENAI_API_KEY in your environment")
    w.answer("Write these files?", "n" + ENTER)
    w.see("nothing was written")
    assert w.finish() == 1
    assert snapshot(home) == {}


# ---------------------------------------------------------------- without a terminal


def test_without_a_terminal_says_which_files_to_edit(home, user):
    result = run_cli(home, "init", env=clean_env(user), input="")
    assert result.returncode == 1
    assert result.stderr == (f"error: bitrouter init needs an interactive terminal; edit "
                             f"{home / 'bitrouter.yaml'} and {home / '.env'} instead, or pass "
                             f"--provider NAME[,NAME] (see `bitrouter --home-dir {home} init --help`)\n")
    assert snapshot(home) == {}


def test_flags_configure_providers_default_and_listen(home, user):
    result = run_cli(home, "init", "--provider", "openai,anthropic", "--default",
                     "openai:gpt-4o,anthropic:claude-sonnet-4-5", "--listen", "127.0.0.1:9001",
                     "--yes", env=clean_env(user, OPENAI_API_KEY=OPENAI_KEY), input="")
    assert result.returncode == 0, result.stderr
    assert OPENAI_KEY not in result.stdout + result.stderr
    assert "sk-o...4444" in result.stdout
    assert "ANTHROPIC_API_KEY is not set" in result.stdout
    cfg = load(home)
    assert cfg.providers["openai"].api_key == OPENAI_KEY and cfg.listen == "127.0.0.1:9001"
    assert [e.label for e in cfg.models["default"].endpoints] == \
        ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"]
    assert "ANTHROPIC_API_KEY" in cfg.unset_vars


def test_api_key_env_names_the_variable_to_reference(home, user):
    result = run_cli(home, "init", "--provider", "openai", "--api-key-env", "WORK_OPENAI_KEY",
                     env=clean_env(user, WORK_OPENAI_KEY=OPENAI_KEY), input="")
    assert result.returncode == 0, result.stderr
    assert raw_yaml(home / "bitrouter.yaml")["providers"]["openai"] == {"api_key": "${WORK_OPENAI_KEY}"}
    assert f"WORK_OPENAI_KEY={OPENAI_KEY}" in (home / ".env").read_text()


def test_answers_file_with_custom_provider_is_repeatable(home, user, tmp_path):
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump({
        "providers": ["mock"],
        "custom": [{"name": "together", "derives": "openai",
                    "api_base": "https://api.together.xyz/v1"}],
        "default": ["together:meta-llama/Llama-3-70b", "mock:echo"],
        "listen": "127.0.0.1:9002"}))
    env = clean_env(user, TOGETHER_API_KEY=CUSTOM_KEY)
    for _ in range(2):  # a second run of the same script changes nothing and needs no backup
        result = run_cli(home, "init", "--answers", str(answers), env=env, input="")
        assert result.returncode == 0, result.stderr
    assert not list(home.glob("*.bak-*"))
    cfg = load(home)
    assert (cfg.providers["together"].api_base, cfg.providers["together"].api_key) == \
        ("https://api.together.xyz/v1", CUSTOM_KEY)
    assert [e.label for e in cfg.models["default"].endpoints] == \
        ["together:meta-llama/Llama-3-70b", "mock:echo"]
    assert (home / ".env").read_text().count("TOGETHER_API_KEY=") == 1


@pytest.mark.parametrize("args, env, message", [
    (["--provider", "opnai"], {}, "unknown provider 'opnai' (did you mean 'openai'?)"),
    (["--provider", "openai", "--listen", "localhost"], {}, "listen: expected host:port"),
    (["--provider", "openai", "--api-key-env", "MISSING_KEY"], {}, "MISSING_KEY is not set"),
    (["--provider", "openai,anthropic", "--api-key-env", "K"], {"K": "x"}, "exactly one --provider"),
    (["--provider", "openai", "--default", "nobody:model"], {}, "unknown provider 'nobody'"),
])
def test_scripted_mistakes_write_nothing(home, user, args, env, message):
    result = run_cli(home, "init", *args, "--yes", env=clean_env(user, **env), input="")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert snapshot(home) == {}


def test_scripted_verify_refuses_a_rejected_key(home, user):
    with FakeUpstream(lambda req: error(401, "bad key")) as fake:
        result = run_cli(home, "init", "--provider", "openai", "--verify", "--yes", input="",
                         env=clean_env(user, OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=fake.url + "/v1"))
    assert result.returncode == 1
    assert "✗ openai: key rejected (HTTP 401: bad key)" in result.stdout
    assert "key check failed" in result.stderr
    assert snapshot(home) == {}


def test_needs_setup_tracks_whether_anything_is_configured(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.endswith(("_API_KEY", "_BASE_URL")):
            monkeypatch.delenv(name)
    home = home_mod.at(tmp_path)
    assert wizard.needs_setup(home)
    (tmp_path / "bitrouter.yaml").write_text("providers:\n  openai:\n    api_key: ${OPENAI_API_KEY}\n")
    assert wizard.needs_setup(home)  # referenced but unset
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={OPENAI_KEY}\n")
    assert not wizard.needs_setup(home)


def test_a_config_that_does_not_load_stops_init_before_any_question(home, user):
    (home / "bitrouter.yaml").write_text("server:\n  listen: nowhere\n")
    before = snapshot(home)
    w = Wizard(home, user)
    w.see("error: ")
    w.see("server.listen")
    w.see("fix this first")
    assert w.finish() == 1
    assert "Providers to set up" not in w.output
    assert snapshot(home) == before


# ---------------------------------------------------------------- prompts that behave


def test_yes_no_waits_for_enter_so_it_never_answers_the_next_question(home, user):
    w = Wizard(home, user)
    w.answer("Providers to set up", ENTER)
    w.answer("Add a custom", "y")
    w.see("yes")  # shown, not yet answered
    w.child.send(BACKSPACE + "n")
    w.see("no")
    w.child.send(ENTER)  # the one Enter answers this question only
    w.see("No providers chosen; nothing was written.")
    assert w.finish() == 1
    assert "Name for the custom provider" not in w.output


def test_prompts_keep_their_default_visible_at_80_columns(home, user):
    w = Wizard(home, user)
    w.child.setwinsize(30, 80)
    w.answer("Providers to set up", SPACE + ENTER)  # OpenAI
    w.answer("OpenAI (openai) API key", OPENAI_KEY + ENTER)
    w.answer("Add a custom", "n" + ENTER)
    w.see("Check the keys now")
    w.see("(Y/n)")
    w.child.send("n" + ENTER)
    w.see("Set up the `default` alias")
    w.see("(Y/n)")
    w.child.send("n" + ENTER)
    w.answer("(host:port; Enter keeps 127.0.0.1:8787)", ENTER)
    w.answer("Write these files?", "n" + ENTER)
    w.finish()
    questions = [line for line in w.output.replace("\r", "\n").split("\n") if "[?]" in line]
    assert questions and not [q for q in questions if "..." in q]  # inquirer cut none of them


def test_a_provider_that_cannot_be_reached_is_not_a_reason_to_retype_the_key(home, user):
    w = Wizard(home, user, OPENAI_BASE_URL="http://127.0.0.1:1/v1")
    w.answer("Providers to set up", SPACE + ENTER)
    w.answer("OpenAI (openai) API key", OPENAI_KEY + ENTER)
    w.answer("Add a custom", "n" + ENTER)
    w.answer("Check the keys now", "y" + ENTER)
    w.see("? openai: could not connect to http://127.0.0.1:1/v1/models")
    w.see(f"(the key was not checked; fix the base URL or the network, then run `bitrouter --home-dir {home} doctor`)")
    w.answer("Set up the `default` alias", "n" + ENTER)
    w.answer("Listen address", ENTER)
    w.answer("Write these files?", "y" + ENTER)
    assert w.finish() == 0
    assert "Enter the openai key again?" not in w.output


def test_a_custom_provider_from_an_earlier_run_is_in_the_checklist(home, user):
    (home / "bitrouter.yaml").write_text(yaml.safe_dump({"providers": {"moonshot": {
        "derives": "anthropic", "api_base": "https://api.moonshot.example", "env_prefix": "MOONSHOT",
        "api_key": "${MOONSHOT_API_KEY}"}}}))
    (home / ".env").write_text(f"MOONSHOT_API_KEY={CUSTOM_KEY}\n")
    w = Wizard(home, user)
    w.see("moonshot (custom) - configured")
    w.child.send(DOWN * 4 + SPACE + ENTER)  # the four featured ones, then moonshot
    w.answer("Keep the moonshot (custom) key already in .env", ENTER)
    w.answer("Add a custom", ENTER)
    w.answer("Check the keys now", "n" + ENTER)
    w.answer("Set up the `default` alias", "n" + ENTER)
    w.answer("Listen address", ENTER)
    w.answer("Write these files?", "y" + ENTER)
    assert w.finish() == 0
    assert load(home).providers["moonshot"].api_key == CUSTOM_KEY
