"""`bitrouter launch`: run Claude Code, Codex or Gemini CLI wired to this home's BitRouter.

The agent gets BitRouter's URL as its base URL, a BitRouter token (minted for the run when
the server requires tokens) as its key, and a model from the alias table; everything
after `--` goes to the agent unchanged. A daemon is started when no server of this home
is running. docs/agents.md describes the same settings for wiring an agent by hand.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass

from bitrouter import Error, config, daemon

TOKEN_LIFETIME = 12 * 3600  # seconds: a launched agent's token outlives a long session, not a week
OPEN_KEY = "bitrouter-open"  # what an agent sends when the server needs no token (they insist on a key)
SMALL_ALIASES = ("small", "fast", "haiku")  # an alias with one of these names serves Claude Code's side tasks


@dataclass
class Wiring:
    """How to run one agent against BitRouter: its arguments before the user's, and its environment."""

    argv: list
    env: dict


def launch(home, agent: str, args=(), model=None, small_model=None) -> int:
    """Run the agent wired to this home's server (started if need be); returns its exit code."""
    cfg = config.load(home)
    if agent not in AGENTS:
        raise Error(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
    program = shutil.which(AGENTS[agent].program)
    if program is None:
        raise Error(f"{AGENTS[agent].program!r} is not on PATH; install it with "
                    f"`npm install -g {AGENTS[agent].package}`")
    current = daemon.running(home)
    url = current.url if current and current.url else daemon.start(home).url
    wiring = AGENTS[agent].wire(home, cfg, url.rstrip("/"), token_for(home), choose_model(cfg, model), small_model)
    os.execvpe(program, [program, *wiring.argv, *args], {**os.environ, **wiring.env})


def token_for(home) -> str:
    """A BitRouter token for the agent: minted for this run when the home has an account."""
    from bitrouter import accounts, tokens
    if accounts.active(home) is None:
        return OPEN_KEY
    return tokens.mint(accounts.load_signing_key(home), scope="api", exp=int(time.time()) + TOKEN_LIFETIME)


def choose_model(cfg, model=None) -> str:
    """The model to give the agent: the one asked for, else the `default` alias, else the first alias."""
    if model:
        return model
    if "default" in cfg.models:
        return "default"
    if cfg.models:
        return next(iter(cfg.models))
    raise Error("no model to give the agent: add an alias under `models:` (bitrouter init) or pass --model")


def catalog_entry(cfg, model: str) -> dict:
    """The catalog facts (context, max_output) of the first endpoint a model name routes to."""
    alias = cfg.models.get(model)
    provider, _, model_id = model.partition(":")
    if alias is not None:
        provider, model_id = alias.endpoints[0].provider, alias.endpoints[0].model_id
    found = cfg.providers.get(provider)
    return (found.models.get(model_id) or {}) if found else {}


# ---------------------------------------------------------------- the three agents


def _claude(home, cfg, url, token, model, small_model) -> Wiring:
    small = small_model or next((name for name in SMALL_ALIASES if name in cfg.models), model)
    return Wiring([], {
        "ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": token, "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": small, "ANTHROPIC_SMALL_FAST_MODEL": small,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})


def _codex(home, cfg, url, token, model, small_model) -> Wiring:
    provider = ('model_providers.bitrouter={name="BitRouter", base_url="%s/v1", env_key="BITROUTER_API_KEY", '
                'wire_api="responses"}' % url)
    argv = ["-c", provider, "-c", "model_provider=bitrouter", "-c", f"model={_toml(model)}"]
    info = catalog_entry(cfg, model)
    if info.get("context"):  # else Codex warns that it has no metadata for the model
        argv += ["-c", f"model_context_window={int(info['context'])}"]
    if info.get("max_output"):
        argv += ["-c", f"model_max_output_tokens={int(info['max_output'])}"]
    return Wiring(argv, {"BITROUTER_API_KEY": token})


def _gemini(home, cfg, url, token, model, small_model) -> Wiring:
    env = {"GOOGLE_GEMINI_BASE_URL": url, "GEMINI_API_KEY": token, "GEMINI_MODEL": model}
    if "GEMINI_CLI_SYSTEM_SETTINGS_PATH" not in os.environ:
        env["GEMINI_CLI_SYSTEM_SETTINGS_PATH"] = _gemini_settings(home)
    return Wiring([], env)


def _gemini_settings(home) -> str:
    """A system settings file that selects API-key auth for Gemini CLI, written under the run dir.

    With GOOGLE_GEMINI_BASE_URL set, Gemini CLI 0.61 picks its `gateway` auth type and
    then refuses it in non-interactive mode; choosing `gemini-api-key` keeps the base URL.
    """
    home.run_dir.mkdir(parents=True, exist_ok=True)
    path = home.run_dir.resolve() / "gemini-settings.json"
    shared = next((folder for folder in path.parents if folder.stat().st_mode & 0o022), None)
    if shared is not None:  # Gemini CLI skips such a file, then fails on its own auth choice
        raise Error(f"Gemini CLI ignores settings under {shared}, which others may write to; "
                    "give BitRouter a run dir in a private folder (--run-dir)")
    path.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
    return str(path)


def _toml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Agent:
    """One agent CLI: its command, its npm package, and how to wire it."""

    program: str
    package: str
    wire: object


AGENTS = {"claude": Agent("claude", "@anthropic-ai/claude-code", _claude),
          "codex": Agent("codex", "@openai/codex", _codex),
          "gemini": Agent("gemini", "@google/gemini-cli", _gemini)}
