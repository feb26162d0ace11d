"""The agent matrix: the real Claude Code, Codex and Gemini CLIs through BitRouter to every upstream protocol.

Each cell starts `bitrouter launch <agent> -- <non-interactive args>` (the command users
run, so its wiring is what is tested) in a fresh working directory and agent home, against
a BitRouter server whose `agent` alias routes to a scripted coding model (coding_model.py)
speaking one upstream protocol. The cell passes when the shell command the model asked
for really ran (its file exists), the CLI printed the model's final answer quoting that
command's output, and, with a reasoning model, every turn handed the model's reasoning
proofs back intact (the model refuses the turn otherwise, as the real APIs do).

The CLIs are installed by `make agents` (pinned in tests/agents/package.json) into the
git-ignored .agents/ folder; none of them touches the real home or the network.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests
import yaml

from coding_model import PROTOCOL_PATHS, CodingModel
from conftest import BITROUTER, ServerProcess, clean_env, free_port, run_cli

AGENT_BIN = Path(__file__).resolve().parent.parent / ".agents" / "node_modules" / ".bin"
UPSTREAMS = ("anthropic", "responses", "openai", "google")
AGENTS = ("claude", "codex", "gemini")
CONTEXT, MAX_OUTPUT = 262144, 32768  # the catalog entry `launch` hands Codex
# The agents' own non-interactive switches; `bitrouter launch` adds the wiring in front.
NON_INTERACTIVE = {
    "claude": lambda prompt: ["-p", prompt, "--dangerously-skip-permissions"],
    "codex": lambda prompt: ["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", prompt],
    "gemini": lambda prompt: ["-p", prompt, "--yolo"],
}
ANSWERS = {"single": "agent-1", "sequential": "agent-1, agent-2", "parallel": "agent-1, agent-2"}


@pytest.fixture(scope="module")
def routers(tmp_path_factory):
    """Factory: routers(upstream, reasoning) -> (ServerProcess, CodingModel), one each, started once."""
    if not (AGENT_BIN / "claude").exists():
        pytest.fail("the agent CLIs are not installed: run `make agents`")
    started, stack = {}, []
    private = _private_folder()

    def get(upstream: str, reasoning: bool):
        key = (upstream, reasoning)
        if key not in started:
            model = CodingModel(reasoning).__enter__()
            stack.append(model)
            home = Path(tempfile.mkdtemp(prefix=f"router-{upstream}-{int(reasoning)}-", dir=private))
            derives, path = PROTOCOL_PATHS[upstream]
            provider = {"derives": derives, "api_base": model.url + path, "api_key": "key-upstream",
                        "models": {"agent-model": {"context": CONTEXT, "max_output": MAX_OUTPUT}}}
            if upstream == "responses":
                provider["api_protocol"] = "responses"
            cfg = {"providers": {"fake": provider},
                   "models": {"agent": {"endpoints": [{"provider": "fake", "model_id": "agent-model"}]}}}
            server = ServerProcess(home, cfg)
            stack.append(server)
            started[key] = (server, model)
        return started[key]
    yield get
    for item in reversed(stack):
        item.stop() if isinstance(item, ServerProcess) else item.__exit__(None, None, None)
    shutil.rmtree(private, ignore_errors=True)


def _private_folder() -> Path:
    """A fresh folder that no one else may write to, all the way up, for the router homes.

    Gemini CLI reads the settings file `launch` writes only from such a folder, which
    nothing under /tmp is: the checkout if it qualifies (a clone under /tmp does not),
    else the user's cache folder.
    """
    for base in (AGENT_BIN.parent.parent, Path.home() / ".cache"):
        base.mkdir(parents=True, exist_ok=True)
        if not any(folder.stat().st_mode & 0o022 for folder in [base.resolve(), *base.resolve().parents]):
            return Path(tempfile.mkdtemp(prefix="bitrouter-agent-homes-", dir=base))
    pytest.fail("no private folder for the router homes (the checkout and ~/.cache are writable by others)")


def run_agent(server, agent: str, prompt: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`bitrouter launch AGENT --model agent -- ARGS` in a fresh work dir, with an isolated agent home."""
    work, agent_home = tmp_path / "work", tmp_path / "agent-home"
    work.mkdir()
    (agent_home / ".codex").mkdir(parents=True)
    env = clean_env(agent_home, PATH=f"{AGENT_BIN}:{os.environ['PATH']}", CODEX_HOME=str(agent_home / ".codex"),
                    IS_SANDBOX="1", DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1",
                    GEMINI_CLI_TRUST_WORKSPACE="true", NO_BROWSER="1")
    return subprocess.run([BITROUTER, "--home-dir", str(server.home), "launch", agent, "--model", "agent", "--",
                           *NON_INTERACTIVE[agent](prompt)],
                          cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)


def run_task(routers, tmp_path: Path, agent: str, upstream: str, reasoning: bool, script: str) -> None:
    """One cell: the command ran, its output reached the model, the answer reached the user,
    and (reasoning) every tool turn after the first handed the model's proofs back."""
    server, model = routers(upstream, reasoning)
    model.refusals.clear()
    returned = model.returned
    result = run_agent(server, agent, f"Run the task and report its output. [[{script}]]", tmp_path)
    said = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert not model.refusals, f"the model refused a turn: {model.refusals}\n{said}"
    assert result.returncode == 0, said
    for n in range(1, 2 if script == "single" else 3):
        assert (tmp_path / "work" / f"proof-{n}.txt").read_text().strip() == f"agent-{n}", said
    assert f"FINAL ANSWER: the commands printed {ANSWERS[script]}" in result.stdout, said
    if reasoning:
        assert model.returned - returned >= (2 if script == "sequential" else 1), said


@pytest.mark.parametrize("reasoning", [False, True], ids=["plain", "reasoning"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("agent", AGENTS)
def test_agent_runs_a_command_through_each_upstream(routers, tmp_path, agent, upstream, reasoning):
    run_task(routers, tmp_path, agent, upstream, reasoning, "single")


@pytest.mark.parametrize("script", ["sequential", "parallel"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("agent", AGENTS)
def test_agent_multi_step_tasks_with_reasoning(routers, tmp_path, agent, upstream, script):
    run_task(routers, tmp_path, agent, upstream, True, script)


def test_launch_starts_the_daemon_and_mints_a_token_when_auth_is_on(tmp_path):
    """No server running and an account present: launch starts the daemon and the agent gets a token."""
    with CodingModel(reasoning=True) as model:
        home = Path(tempfile.mkdtemp(prefix="router-auth-", dir=_private_folder()))
        derives, path = PROTOCOL_PATHS["anthropic"]
        cfg = {"server": {"listen": f"127.0.0.1:{free_port()}"},
               "providers": {"fake": {"derives": derives, "api_base": model.url + path, "api_key": "key-upstream"}},
               "models": {"default": {"endpoints": [{"provider": "fake", "model_id": "agent-model"}]}}}
        (home / "bitrouter.yaml").write_text(yaml.safe_dump(cfg))
        assert run_cli(home, "account", "-g").returncode == 0
        work, agent_home = tmp_path / "work", tmp_path / "agent-home"
        work.mkdir()
        agent_home.mkdir()
        env = clean_env(agent_home, PATH=f"{AGENT_BIN}:{os.environ['PATH']}", IS_SANDBOX="1", DISABLE_TELEMETRY="1")
        try:
            result = subprocess.run([BITROUTER, "--home-dir", str(home), "launch", "claude", "--",
                                     *NON_INTERACTIVE["claude"]("Run the task. [[single]]")],
                                    cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=180)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "bitrouter daemon started" in result.stdout
            assert "FINAL ANSWER: the commands printed agent-1" in result.stdout
            assert (work / "proof-1.txt").exists() and not model.refusals
            status = run_cli(home, "status")
            assert "running" in status.stdout
            open_server = requests.post(f"http://{cfg['server']['listen']}/v1/messages", timeout=10, json={
                "model": "default", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
            assert open_server.status_code == 401  # the agent got in with its minted token, nobody else does
        finally:
            run_cli(home, "stop")
            shutil.rmtree(home, ignore_errors=True)
